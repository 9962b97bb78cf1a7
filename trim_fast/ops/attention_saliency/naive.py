"""The naive twins: materialise attention through :mod:`trim_fast.reference` (the tests' oracle,
not a backend). Same shapes and conventions as the public entries."""
from __future__ import annotations

import torch

from trim_fast import reference
from trim_fast.types import SaliencyStats


def attention_saliency_naive(q, k, *, causal=True, scale=None, seq_lens=None, window=None) -> SaliencyStats:
    """Padded ``[B, H, N, D]``: the float64 reference."""
    return reference.attention_saliency(q, k, causal=causal, scale=scale, seq_lens=seq_lens,
                                        window=window)


def attention_saliency_varlen_naive(q, k, cu_seqlens, *, causal=True, scale=None, window=None) -> SaliencyStats:
    """Packed ``[T, H, D]``: the reference per sequence; ``[T]`` statistics, lse ``[H, T]``."""
    parts = []
    cu = cu_seqlens.tolist()
    h = q.shape[1]
    for s, e in zip(cu[:-1], cu[1:]):
        if e == s:
            continue
        st = attention_saliency_naive(q[s:e].transpose(0, 1)[None], k[s:e].transpose(0, 1)[None],
                                      causal=causal, scale=scale, window=window)
        parts.append(st)
    if not parts:
        empty = q.new_zeros((0,), dtype=torch.float32)
        return SaliencyStats(empty, empty, empty, q.new_zeros((h, 0), dtype=torch.float32),
                             empty, empty, h)
    cat = lambda name: torch.cat([getattr(p, name)[0] for p in parts])  # noqa: E731
    return SaliencyStats(cat("row_entropy"), cat("col_mass"), cat("col_mass_weighted"),
                         torch.cat([p.lse[0] for p in parts], dim=1), cat("row_visible"),
                         cat("col_seen"), h)
