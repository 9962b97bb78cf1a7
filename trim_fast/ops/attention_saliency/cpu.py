"""``backend="cpu"``: the C++ kernel (``trim_fast._C``), two tiled passes that never form the
``n x n`` attention (see csrc/attention_saliency.cpp for the design). fp16/bf16 inputs are
upcast to fp32 here; statistics come back fp32."""
from __future__ import annotations

import torch

from trim_fast._ext import _C
from trim_fast.validation import check_lse_finite


def _as_fp32_numpy(x: torch.Tensor):
    return x.detach().to(torch.float32).contiguous().numpy()


def _run(fn, q, k, offsets, *, causal, scale, window, lse):
    lse_np = None if lse is None else _as_fp32_numpy(lse)
    outs = fn(_as_fp32_numpy(q), _as_fp32_numpy(k), offsets.detach().to(torch.int64).contiguous().numpy(),
              bool(causal), float(scale), int(window or 0), lse_np, torch.get_num_threads())
    return tuple(torch.from_numpy(o) for o in outs)


def saliency_padded(q, k, *, causal, scale, seq_lens, window, lse):
    """q ``[B, H, N, D]``, k ``[B, H_kv, N, D]``, seq_lens ``[B]`` ->
    ``(row_entropy [B, N], col_mass [B, N], col_mass_weighted [B, N], lse [B, H, N])``."""
    if lse is not None:
        n = q.shape[2]
        valid = torch.arange(n)[None, None, :] < seq_lens.cpu()[:, None, None]
        check_lse_finite(lse, valid.expand(lse.shape))
    return _run(_C.attention_saliency_padded, q, k, seq_lens.cpu(), causal=causal, scale=scale,
                window=window, lse=lse)


def saliency_varlen(q, k, cu_seqlens, *, max_seqlen, causal, scale, window, lse):
    """q ``[T, H, D]``, k ``[T, H_kv, D]``, cu_seqlens ``[B + 1]`` ->
    ``([T], [T], [T], lse [H, T])``. ``max_seqlen`` is not needed on the CPU."""
    del max_seqlen
    if lse is not None:
        check_lse_finite(lse, torch.ones_like(lse, dtype=torch.bool))
    return _run(_C.attention_saliency_varlen, q, k, cu_seqlens.cpu(), causal=causal, scale=scale,
                window=window, lse=lse)
