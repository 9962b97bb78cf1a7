"""TRIM as a DataFlex selector, registered as ``trim``.

`DataFlex <https://github.com/OpenDCAI/DataFlex>`_ trains with LLaMA-Factory. Every
``update_step`` steps its ``dynamic_select`` trainer asks a selector which training examples the
next steps use. This selector scores the train set's pre-tokenized rows against the eval set's
rows (the targets) with TRIM. It uses the model being trained, with its current weights, and
returns the indices of the ``num_samples`` best rows. That count is DataFlex's: batch size x
``update_step``.

Install (DataFlex's declared dependencies pin older torch/transformers/datasets, so install the
package alone; the selector needs only what trim_fast already has)::

    pip install --no-deps dataflex

DataFlex imports only its built-in selectors, so start training through this module. It
registers ``trim`` and then runs DataFlex's own launcher (``dataflex.launcher.launch``) on the
same arguments::

    python -m trim_fast.integrations.dataflex train.yaml [key=value ...]
    torchrun --nproc_per_node 4 -m trim_fast.integrations.dataflex train.yaml

``train.yaml`` is DataFlex's training YAML. The keys that matter here are::

    train_type: dynamic_select
    components_cfg_file: components.yaml
    component_name: trim
    eval_dataset: my_target_task      # the targets: a LLaMA-Factory dataset (required)
    warmup_step: 100
    update_step: 200
    update_times: 3

``components.yaml``::

    selectors:
      trim:
        name: trim
        params:
          cache_dir: saves/trim       # optional: each selection is saved as step_<id>.json
          scope: response             # which tokens count: response (labels != -100), all, prompt
          layers: 6                   # any of trim_fast.integrations.SCORING_KNOBS; unset ones
          max_tokens: 16384           # keep trim_fast's defaults (trim_fast.config)

How it maps onto the API: ``select(model, step_id, num_samples)`` runs
``trim_fast.Selector(model, tokenizer, config).select(train_rows, eval_rows, k=num_samples)``.
Before the call the model goes to eval mode, and afterwards each module's own train/eval flag is
restored. The ``Selector`` unwraps DDP/accelerate/PEFT itself. Under torchrun (the process group
that accelerate set up), the ``Selector`` splits the forward passes across ranks. Every rank gets
the whole result, and rank 0's index list is broadcast, so every rank returns the same global
indices. The tokenizer is the ``tokenizer`` that DataFlex passes to ``select``, or else the data
collator's.

What is and is not covered: the rows are LLaMA-Factory's preprocessed ones (``input_ids``,
``labels`` with -100 on the prompt, ``attention_mask``). LLaMA-Factory labels the template's
end-of-turn text (``<|im_end|>`` and the newline after it) with the answer; template text never
counts in trim_fast (docs/SPEC.md section 0: found from the tokenizer's chat template), so these
rows select what the same records select as chats, in every scope. A packed row (``packing: true``) is
scored as one example. Rows with no counted token are never selected, so fewer than
``num_samples`` indices can come back. A candidate pool that DataFlex sets
(``set_candidate_pool``) is scored on its own, which means its IDF is that of the candidate pool.
Tested with dataflex 1.1.0 against DataFlex's own registry and component loading. LLaMA-Factory's
trainer itself is not exercised in trim_fast's tests: its pins do not install next to trim_fast's
torch/transformers.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from trim_fast.integrations import selection_config
from trim_fast.types import SCOPES

NAME = "trim"
INSTALL = "pip install --no-deps dataflex"

logger = logging.getLogger("trim_fast.integrations")

_class = None


def _dataflex():
    try:
        from dataflex.core.registry import REGISTRY, register_selector
        from dataflex.train.selector.base_selector import Selector as Base
    except ImportError as exc:
        raise ImportError(f"the trim DataFlex selector needs DataFlex: {INSTALL} (--no-deps: its "
                          f"declared dependencies would replace your torch and transformers). "
                          f"Import failed with: {exc}") from exc
    return REGISTRY, register_selector, Base


def register(name: str = NAME):
    """Register the selector with DataFlex under ``name`` (idempotent) and return its class."""
    global _class
    registry, register_selector, base = _dataflex()
    try:
        existing = registry.get("selector", name)
    except KeyError:
        existing = None
    if existing is not None:
        if getattr(existing, "_trim_fast", False):
            return existing
        raise ValueError(f"a DataFlex selector named {name!r} is already registered "
                         f"({existing.__module__}.{existing.__qualname__})")
    if _class is None:
        _class = _make_class(base)
    register_selector(name)(_class)
    return _class


def _make_class(base):
    import torch.distributed as dist

    class TrimSelector(base):
        """TRIM selector for DataFlex: see :mod:`trim_fast.integrations.dataflex`."""

        _trim_fast = True

        # DataFlex's registry passes only the parameters __init__ names, and newer DataFlex
        # versions refuse unknown YAML params, so every knob is spelled out here. None means
        # trim_fast's default.
        def __init__(self, dataset, accelerator, data_collator, cache_dir: str | None = None,
                     eval_dataset=None, scope: str = "response", method: str | None = None,
                     layers: int | None = None, w_row: float | None = None,
                     w_col: float | None = None, saliency: str | None = None,
                     fallback: str | None = None, fallback_penalty: float | None = None,
                     idf: str | None = None, w_mean: float | None = None,
                     w_max: float | None = None, w_coverage: float | None = None,
                     combine: str | None = None, max_length: int | None = None,
                     max_tokens: int | None = None, chunk_size: int | None = None,
                     seed: int = 42):
            super().__init__(dataset, accelerator, data_collator, cache_dir)
            if scope not in SCOPES:
                raise ValueError(f"trim selector: scope must be one of {', '.join(SCOPES)}; "
                                 f"got {scope!r}")
            if eval_dataset is None:
                raise ValueError("trim selector: no eval dataset, but TRIM needs the target "
                                 "task's examples; set eval_dataset (or val_size) in the "
                                 "training YAML")
            self.eval_dataset = eval_dataset
            self.scope = scope
            self.seed = seed  # DataFlex's warmup draws
            self.config = selection_config(
                scope=scope, method=method, layers=layers, w_row=w_row, w_col=w_col,
                saliency=saliency, fallback=fallback, fallback_penalty=fallback_penalty, idf=idf,
                w_mean=w_mean, w_max=w_max, w_coverage=w_coverage, combine=combine,
                max_length=max_length, max_tokens=max_tokens, chunk_size=chunk_size)

        def select(self, model, step_id: int, num_samples: int, **kwargs) -> list[int]:
            from trim_fast import Selector

            tokenizer = kwargs.get("tokenizer") or getattr(self.data_collator, "tokenizer", None)
            if tokenizer is None:
                raise ValueError("trim selector: no tokenizer (DataFlex passes tokenizer= to "
                                 "select, or the data collator has one)")
            positions = self.get_candidate_pool()
            pool = self.dataset if positions is None else self.dataset.select(positions)
            targets = self.eval_dataset
            if isinstance(targets, dict):
                targets = {str(task): counted_rows(ds, self.scope) for task, ds in targets.items()}
            else:
                targets = counted_rows(targets, self.scope)
            modes = [(m, m.training) for m in model.modules()]
            model.eval()
            try:
                result = Selector(model, tokenizer, self.config).select(
                    counted_rows(pool, self.scope), targets, k=int(num_samples))
            finally:
                for m, training in modes:
                    m.training = training
            if not result.indices:  # DataFlex would build an empty subset and fail obscurely
                raise ValueError(f"trim selector: none of the {len(pool)} candidate rows has a "
                                 "counted token that matches the targets, so nothing can be "
                                 "selected; check the rows' labels (-100 marks what does not count)")
            indices = result.indices if positions is None else [positions[i] for i in result.indices]
            if dist.is_available() and dist.is_initialized():
                box = [indices]
                dist.broadcast_object_list(box, src=0)
                indices = box[0]
            if len(indices) < num_samples <= len(pool):
                logger.warning("trim selector: %d rows have no counted token; %d of %d asked "
                               "for are selected", len(result.unscored), len(indices), num_samples)
            if self.cache_dir:
                from dataflex.utils.selector_io import save_selection

                scores = [float(result.combined[i]) for i in result.indices]
                save_selection(os.path.join(self.cache_dir, f"step_{step_id}.json"), indices,
                               {"trim_score": scores}, self.accelerator)
            return indices

    TrimSelector.__module__, TrimSelector.__qualname__ = __name__, "TrimSelector"
    return TrimSelector


def counted_rows(ds, scope: str):
    """Pre-tokenized rows whose counted tokens follow ``scope``: ``response`` (the rows as
    given: ``labels`` != -100 count), ``all`` (labels dropped: every non-padding token counts),
    ``prompt`` (the tokens whose label is -100). Template tokens and the first content token
    never count, whatever the row says (SPEC 0)."""
    if scope == "response" or "labels" not in ds.column_names:
        return ds
    if scope == "all":
        return ds.remove_columns(["labels"])
    return ds.map(lambda row: {"counted": [int(x == -100) for x in row["labels"]]},
                  remove_columns=["labels"], keep_in_memory=True)


def __getattr__(name: str) -> Any:
    if name == "TrimSelector":
        return register()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def launch() -> None:
    """Register ``trim``, then run DataFlex's launcher (``sys.argv[1]`` is the YAML)."""
    register()
    try:
        from dataflex.launcher import launch as dataflex_launch
    except ImportError as exc:
        raise ImportError(f"training through DataFlex needs DataFlex and LLaMA-Factory "
                          f"({INSTALL}, and LLaMA-Factory as DataFlex documents). Import "
                          f"failed with: {exc}") from exc
    dataflex_launch()


__all__ = ["NAME", "INSTALL", "SCOPES", "register", "counted_rows", "launch"]  # + TrimSelector, on use

if __name__ == "__main__":
    launch()
