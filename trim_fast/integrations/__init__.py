"""TRIM inside other frameworks' data pipelines; each plug-in is a thin layer over
:class:`trim_fast.Selector`.

:mod:`trim_fast.integrations.dataflex`
    A DataFlex selector (``component_name: trim``): during training, DataFlex picks the next
    steps' examples from the train set with it, scoring them against the eval set with the
    model being trained.
:mod:`trim_fast.integrations.data_juicer`
    A data-juicer operator (``trim_selector``): dataset in, dataset out. It keeps the top ``k``
    and writes the score under ``__dj__stats__["trim_score"]``.

Neither framework is a dependency of trim_fast, and neither module imports one until it is
used. The install commands are in each module's docstring: both frameworks install with
``--no-deps``, because their declared dependencies pin older torch/transformers/datasets.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trim_fast.config import SelectionConfig

# SelectionConfig knobs a plug-in exposes as its own parameters. How many examples to keep
# (fraction/k) is the framework's call, and scope is handled by each plug-in.
SCORING_KNOBS = ("method", "layers", "w_row", "w_col", "saliency", "fallback", "fallback_penalty",
                 "idf", "w_mean", "w_max", "w_coverage", "combine", "max_length", "max_tokens",
                 "chunk_size")


def selection_config(**given: Any) -> "SelectionConfig":
    """A :class:`SelectionConfig` from the settings a plug-in was given. ``None`` means "not
    set", so the defaults stay those of :mod:`trim_fast.config`. (Imported here: data-juicer
    imports every plug-in when it starts, and trim_fast.config brings torch.)"""
    from trim_fast.config import SelectionConfig

    return SelectionConfig(**{k: v for k, v in given.items() if v is not None})


__all__ = ["SCORING_KNOBS", "selection_config"]
