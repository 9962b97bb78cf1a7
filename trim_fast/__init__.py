"""trim_fast: the fast backend for TRIM (token-wise attention-derived saliency for
instruction-data selection). The method is defined in SPEC.md; ``trim_fast.reference`` is its
naive oracle and every fast path is tested against it.

The pipeline, stage by stage: ``trim_fast.data`` (formats, counted tokens) ->
``trim_fast.capture`` (saliency inside the model's own forward) -> ``trim_fast.saliency``
(alpha) -> ``trim_fast.fingerprints`` (banks) -> ``trim_fast.ops.token_match`` and
``trim_fast.pool`` (scoring) -> ``trim_fast.selection``.
"""
from trim_fast.capture import capture_saliency, encode_last_hidden, token_budget_batches
from trim_fast.fingerprints import FingerprintAccumulator, FingerprintBank
from trim_fast.models.loading import load_model, load_tokenizer
from trim_fast.ops.attention_saliency import attention_saliency, attention_saliency_varlen
from trim_fast.ops.token_match import match_and_pool
from trim_fast.pipeline import SelectionConfig
from trim_fast.reference import SaliencyStats, TokenSaliency
from trim_fast.saliency import token_saliency
from trim_fast.selection import combine_tasks, num_selected, select_top_k

__version__ = "0.1.0"

__all__ = [
    "attention_saliency",
    "attention_saliency_varlen",
    "capture_saliency",
    "combine_tasks",
    "encode_last_hidden",
    "FingerprintAccumulator",
    "FingerprintBank",
    "load_model",
    "load_tokenizer",
    "match_and_pool",
    "num_selected",
    "SaliencyStats",
    "select_top_k",
    "SelectionConfig",
    "token_budget_batches",
    "TokenSaliency",
    "token_saliency",
]
