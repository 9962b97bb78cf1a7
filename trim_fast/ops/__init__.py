"""Kernels, each op in its folder with its naive twin beside the fast paths."""
from trim_fast.ops.attention_saliency import attention_saliency, attention_saliency_varlen

__all__ = ["attention_saliency", "attention_saliency_varlen"]
