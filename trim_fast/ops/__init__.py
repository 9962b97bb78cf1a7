"""Kernels, each op in its folder with its naive twin beside the fast paths."""
from trim_fast.ops.attention_saliency import attention_saliency, attention_saliency_varlen
from trim_fast.ops.token_match import match_and_pool

__all__ = ["attention_saliency", "attention_saliency_varlen", "match_and_pool"]
