"""The naive twin: materialise attention with the reference (for tests and ``backend="reference"``)."""
from __future__ import annotations

import torch

from trim_fast import reference


def attention_saliency_naive(q, k, *, causal, scale, seq_lens, window):
    """``(row_entropy, col_mass, col_mass_weighted, lse)`` from the float64 reference."""
    st = reference.attention_saliency(q, k, causal=causal, scale=scale, seq_lens=seq_lens,
                                      window=window)
    return st.row_entropy, st.col_mass, st.col_mass_weighted, st.lse


def attention_saliency_varlen_naive(q, k, cu_seqlens, *, causal, scale, window):
    """Varlen twin: run the reference per packed sequence. ``q [T, H, D]`` -> ``[T]``, lse ``[H, T]``."""
    outs = ([], [], [], [])
    cu = cu_seqlens.tolist()
    for s, e in zip(cu[:-1], cu[1:]):
        qs = q[s:e].transpose(0, 1)[None]
        ks = k[s:e].transpose(0, 1)[None]
        if e == s:
            empty = q.new_zeros((0,), dtype=torch.float32)
            for o, v in zip(outs, (empty, empty, empty, q.new_zeros((q.shape[1], 0), dtype=torch.float32))):
                o.append(v)
            continue
        r = attention_saliency_naive(qs, ks, causal=causal, scale=scale, seq_lens=None, window=window)
        for o, v in zip(outs[:3], r[:3]):
            o.append(v[0])
        outs[3].append(r[3][0])
    return (torch.cat(outs[0]), torch.cat(outs[1]), torch.cat(outs[2]), torch.cat(outs[3], dim=1))
