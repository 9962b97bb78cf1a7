"""trim_fast: the fast backend for TRIM (token-wise attention-derived saliency for
instruction-data selection). The method is defined in SPEC.md; ``trim_fast.reference`` is its
naive oracle and every fast path is tested against it."""
from trim_fast.ops.attention_saliency import attention_saliency, attention_saliency_varlen
from trim_fast.reference import SaliencyStats, TokenSaliency
from trim_fast.saliency import token_saliency

__version__ = "0.1.0"

__all__ = [
    "attention_saliency",
    "attention_saliency_varlen",
    "SaliencyStats",
    "TokenSaliency",
    "token_saliency",
]
