"""TRIM as a data-juicer operator: ``trim_selector``.

The operator takes a dataset and returns a dataset. It scores every row against the targets with
TRIM, writes the score under ``__dj__stats__["trim_score"]`` and keeps the top ``k`` rows, best
first. Those are the same rows, in the same order and with the same scores, that
``trim-fast select`` writes to its coreset for the same data.

Why a Selector op and not a Filter: the score weights tokens by their IDF over the whole pool.
A Filter computes its stats batch by batch (``dataset.map``), so each batch would get its own
IDF and the scores would not be TRIM's. data-juicer's Selector ops get the whole dataset in one
``process(dataset)`` call.

Install (data-juicer's declared dependencies pin dill/multiprocess and pull in streamlit and
more; these are the packages that importing and running an operator needs next to
trim_fast)::

    pip install loguru tomli aiohttp httpx wget emoji 'jsonargparse<5' beautifulsoup4 tabulate \
        jsonlines ray
    pip install --no-deps py-data-juicer

Install ray yourself: data-juicer needs it to build any operator, and if it is missing,
data-juicer runs ``pip install ray`` on its own into the running environment.

data-juicer finds the operator through the entry point group ``data_juicer.ops``, which
trim_fast declares. A recipe can also load this file with ``custom_operator_paths``. A recipe::

    process:
      - trim_selector:
          targets: data/target_task.jsonl   # a path, a list of paths (one task each) or a
                                            # hub id; null: in-domain mode (pool sample)
          model: HuggingFaceTB/SmolLM2-135M-Instruct   # null: the embedded SmolLM2
          k: 500                            # or fraction: 0.05 (rounded half up); neither:
                                            # trim_fast's default fraction
          layers: 6                         # any trim_fast.integrations.SCORING_KNOBS entry,
          scope: all                        # and scope; unset ones keep trim_fast's defaults

From Python::

    import trim_fast.integrations.data_juicer          # registers trim_selector
    from data_juicer.ops import OPERATORS
    op = OPERATORS.modules["trim_selector"](targets="targets.jsonl", k=500)
    top = op.run(dataset)           # a datasets.Dataset (data-juicer's NestedDataset)

``keep_all: true`` keeps every row in its original order with its score, for a later
``topk_specified_field_selector(field_key="__dj__stats__.trim_score", topk=k)``. That selector
picks the same top ``k`` as long as no row is unscored (-inf), because it breaks ties by the
lower index too. Rows are read as trim_fast reads records: messages, ShareGPT, Alpaca,
prompt/completion, pre-tokenized or plain ``text`` (``format`` forces one). Rows of none of these
shapes are read from the op's ``text_key`` column as plain text.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Union

from trim_fast.integrations import selection_config

INSTALL = ("pip install loguru tomli aiohttp httpx wget emoji 'jsonargparse<5' beautifulsoup4 "
           "tabulate jsonlines ray && pip install --no-deps py-data-juicer")
NAME = "trim_selector"
SCORE_KEY = "trim_score"

try:
    from data_juicer.ops.base_op import OPERATORS, Selector
    from data_juicer.utils.constant import Fields
except ImportError as exc:
    raise ImportError(f"the trim_selector operator needs data-juicer: {INSTALL}. Import failed "
                      f"with: {exc}") from exc

logger = logging.getLogger("trim_fast.integrations")

# Loaded models, kept out of the operator: data-juicer serialises an operator's attributes for
# its cache fingerprints and its workers.
_MODELS: dict = {}


def _model(name: Optional[str], adapter: Optional[str], device: Optional[str], dtype: str):
    key = (name, adapter, device, dtype)
    if key not in _MODELS:
        from trim_fast.models.loading import load_model, load_tokenizer

        _MODELS.clear()  # one model at a time
        _MODELS[key] = (load_model(name, adapter=adapter, device=device, dtype=dtype),
                        load_tokenizer(name))
    return _MODELS[key]


@OPERATORS.register_module(NAME)
class TrimSelector(Selector):
    """Keep the rows that matter most for the targets (TRIM); score under
    ``__dj__stats__.trim_score``. See :mod:`trim_fast.integrations.data_juicer`."""

    def __init__(self, targets: Union[str, List[Any], Dict[str, Any], None] = None,
                 model: Optional[str] = None, k: Optional[int] = None,
                 fraction: Optional[float] = None, keep_all: bool = False,
                 score_key: str = SCORE_KEY, adapter: Optional[str] = None,
                 device: Optional[str] = None, dtype: str = "auto",
                 format: Optional[str] = None, split: Optional[str] = None,
                 scope: Optional[str] = None, method: Optional[str] = None,
                 layers: Optional[int] = None, w_row: Optional[float] = None,
                 w_col: Optional[float] = None, saliency: Optional[str] = None,
                 fallback: Optional[str] = None, fallback_penalty: Optional[float] = None,
                 idf: Optional[str] = None, w_mean: Optional[float] = None,
                 w_max: Optional[float] = None, w_coverage: Optional[float] = None,
                 combine: Optional[str] = None, max_length: Optional[int] = None,
                 max_tokens: Optional[int] = None, chunk_size: Optional[int] = None,
                 target_sample: Optional[int] = None, seed: Optional[int] = None,
                 *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.targets = targets
        self.model, self.adapter, self.device, self.dtype = model, adapter, device, dtype
        self.k, self.fraction, self.keep_all, self.score_key = k, fraction, keep_all, score_key
        self.format, self.split = format, split
        # checked now, so a bad recipe fails before any model is loaded
        self.config = selection_config(
            fraction=fraction, k=k, scope=scope, method=method, layers=layers, w_row=w_row,
            w_col=w_col, saliency=saliency, fallback=fallback, fallback_penalty=fallback_penalty,
            idf=idf, w_mean=w_mean, w_max=w_max, w_coverage=w_coverage, combine=combine,
            max_length=max_length, max_tokens=max_tokens, chunk_size=chunk_size,
            target_sample=target_sample, seed=seed)

    def process(self, dataset):
        from trim_fast import Selector as Trim
        from trim_fast.data import detect_format, open_records, open_tasks

        if len(dataset) == 0:
            return dataset
        to_messages = None
        first = dict(dataset[0])
        if self.format is None and detect_format(first) is None and self.text_key in first:
            to_messages = lambda row, key=self.text_key: row[key]  # noqa: E731 - plain text
        pool = open_records(dataset, format=self.format, to_messages=to_messages)
        targets = None if self.targets is None else open_tasks(self.targets, split=self.split)
        model, tokenizer = _model(self.model, self.adapter, self.device, self.dtype)
        result = Trim(model, tokenizer, self.config).select(pool, targets)
        scores = result.combined.tolist()
        stats = dataset[Fields.stats] if Fields.stats in dataset.column_names else [None] * len(scores)
        merged = [{**(s or {}), self.score_key: v} for s, v in zip(stats, scores)]
        if Fields.stats in dataset.column_names:
            dataset = dataset.remove_columns([Fields.stats])
        dataset = dataset.add_column(Fields.stats, merged)
        if self.keep_all:
            return dataset
        logger.info("trim_selector: kept %d of %d rows", len(result.indices), len(scores))
        return dataset.select(result.indices)


__all__ = ["TrimSelector", "NAME", "SCORE_KEY", "INSTALL"]
