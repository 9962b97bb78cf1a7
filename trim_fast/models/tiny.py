"""Tiny random-initialised models built in code, for tests and benchmarks: no download.

Each uses the embedded SmolLM2 tokenizer's vocabulary size so that the real tokenizer can feed
them. Llama has GQA, Mistral a sliding window, Qwen2 attention biases, BERT is bidirectional.
"""
from __future__ import annotations

import torch

TINY_FAMILIES = ("llama", "qwen2", "mistral", "bert")
TINY_VOCAB = 49152  # SmolLM2's tokenizer


def tiny_config(family: str, *, vocab_size: int = TINY_VOCAB, hidden_size: int = 64,
                layers: int = 3, heads: int = 4, kv_heads: int = 2, window: int = 8):
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                  num_attention_heads=heads, intermediate_size=2 * hidden_size,
                  max_position_embeddings=2048)
    if family == "llama":
        return tf.LlamaConfig(num_key_value_heads=kv_heads, pad_token_id=2, bos_token_id=1,
                              eos_token_id=2, **common)
    if family == "qwen2":
        return tf.Qwen2Config(num_key_value_heads=kv_heads, pad_token_id=2, **common)
    if family == "mistral":
        return tf.MistralConfig(num_key_value_heads=kv_heads, sliding_window=window,
                                pad_token_id=2, **common)
    if family == "bert":
        return tf.BertConfig(pad_token_id=2, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0, **common)
    raise ValueError(f"unknown tiny model family {family!r}; choose from {TINY_FAMILIES}")


def tiny_model(family: str, *, seed: int = 0, attn_implementation: str = "sdpa", **config_kw):
    """A base model (no LM head) in eval mode, fp32, with seeded random weights."""
    from transformers import AutoModel

    cfg = tiny_config(family, **config_kw)
    torch.manual_seed(seed)
    model = AutoModel.from_config(cfg, attn_implementation=attn_implementation)
    return model.eval()


def smollm2_135m_config():
    """SmolLM2-135M's architecture (Llama, GQA 9/3 heads, 30 layers, d=576), for benchmarks on
    machines that lack the GGUF file: random weights time the same as the real ones."""
    import transformers as tf

    return tf.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                          num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
                          rope_theta=100000.0, tie_word_embeddings=True, pad_token_id=2,
                          bos_token_id=1, eos_token_id=2)
