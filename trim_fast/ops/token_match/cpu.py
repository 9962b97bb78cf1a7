"""CPU backend: the C++ kernel ``trim_fast._C.token_match_pool`` (OpenMP over examples).

The kernel reads fp32; other dtypes are converted a slab of examples at a time so the copy
stays small."""
from __future__ import annotations

import torch

from trim_fast._ext import _C

_SLAB_BYTES = 256 << 20


def pool_cpu(hidden, rows, fallback_score, weights, vectors):
    b, n, d = hidden.shape
    vectors_np = vectors.float().contiguous().numpy()
    direct = hidden.dtype == torch.float32 and hidden.is_contiguous()
    slab = b if direct else max(1, _SLAB_BYTES // max(1, n * d * 4))
    parts = []
    n_bad = 0
    for start in range(0, b, slab):
        sl = slice(start, start + slab)
        h = hidden[sl] if direct else hidden[sl].float().contiguous()
        out = _C.token_match_pool(h.numpy(), rows[sl].contiguous().numpy(),
                                  fallback_score[sl].float().contiguous().numpy(),
                                  weights[sl].float().contiguous().numpy(), vectors_np)
        parts.append([torch.from_numpy(x) for x in out[:5]])
        n_bad += int(out[5])
    sum_ws, sum_w, mx, n_scored, n_matched = (torch.cat(cols) for cols in zip(*parts))
    return sum_ws, sum_w, mx, n_scored, n_matched, n_bad
