"""Kernels on plain tensors, each op in its folder with its naive twin beside the fast paths.
Importing this package imports torch (and the C++ extension where built), nothing of the model
side: no transformers, no bank, no CLI."""
from trim_fast.ops.attention_saliency import attention_saliency, attention_saliency_varlen
from trim_fast.ops.token_match import match_and_pool, token_scores

__all__ = ["attention_saliency", "attention_saliency_varlen", "match_and_pool", "token_scores"]
