"""trim_fast: the fast backend for TRIM (token-wise attention-derived saliency for
instruction-data selection). The method is defined in docs/SPEC.md; :mod:`trim_fast.reference`
is its naive oracle and every fast path is tested against it.

The pipeline, stage by stage: :mod:`trim_fast.data` (records, counted tokens) ->
:mod:`trim_fast.models` and :mod:`trim_fast.capture` (the model's forward, saliency inside its
attention) -> :mod:`trim_fast.saliency` (alpha) -> :mod:`trim_fast.bank` (fingerprints) ->
:mod:`trim_fast.scoring` (the pool) -> :mod:`trim_fast.selection`; :mod:`trim_fast.run` holds
the run machinery and :class:`trim_fast.Selector` puts it together. The kernels live in
:mod:`trim_fast.ops`. Names below are imported on first use, so ``import trim_fast.ops`` stays
free of transformers.
"""
import logging

from trim_fast._lazy import lazy_exports

__version__ = "0.2.0"

logging.getLogger("trim_fast").addHandler(logging.NullHandler())

_EXPORTS = {
    "Selector": "trim_fast.api",
    "SelectionResult": "trim_fast.api",
    "SelectionConfig": "trim_fast.config",
    "ModelConfig": "trim_fast.config",
    "WarmupConfig": "trim_fast.config",
    "FingerprintBank": "trim_fast.bank",
    "PoolScores": "trim_fast.scoring.engine",
    "ForwardCache": "trim_fast.scoring.engine",
    "open_records": "trim_fast.data",
    "DataError": "trim_fast.errors",
    "TrimError": "trim_fast.errors",
    "ConfigError": "trim_fast.errors",
    "BankMismatchError": "trim_fast.errors",
    "RunDirectoryError": "trim_fast.errors",
    "ModelError": "trim_fast.errors",
    "UnsupportedModelError": "trim_fast.errors",
    "HubUnavailableError": "trim_fast.errors",
    "load_model": "trim_fast.models.loading",
    "load_tokenizer": "trim_fast.models.loading",
    "load_causal_lm": "trim_fast.models.loading",
    "Selection": "trim_fast.selection",
    "token_saliency": "trim_fast.saliency",
    "run_warmup": "trim_fast.warmup",
    "attention_saliency": "trim_fast.ops.attention_saliency",
    "attention_saliency_varlen": "trim_fast.ops.attention_saliency",
    "match_and_pool": "trim_fast.ops.token_match",
    "capture_saliency": "trim_fast.capture",
    "encode_last_hidden": "trim_fast.capture",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
