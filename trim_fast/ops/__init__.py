"""Kernels on plain tensors, each op in its folder with its naive twin beside the fast paths.
Names are imported from their modules on first use."""
import importlib

_EXPORTS = {
    "attention_saliency": "attention_saliency", "attention_saliency_varlen": "attention_saliency",
    "match_and_pool": "token_match", "token_scores": "token_match",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
