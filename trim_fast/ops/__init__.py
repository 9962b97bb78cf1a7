"""Kernels on plain tensors, each op in its folder with its naive twin beside the fast paths.
Names are imported from their modules on first use."""
from trim_fast._lazy import lazy_exports

_EXPORTS = {
    "attention_saliency": ".attention_saliency", "attention_saliency_varlen": ".attention_saliency",
    "match_and_pool": ".token_match", "token_scores": ".token_match",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
