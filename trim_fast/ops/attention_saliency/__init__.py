"""``attention_saliency``: per-token attention statistics straight from Q and K (SPEC section 1).

One functional entry per layout, flash-attention style: ``attention_saliency`` for padded
``[B, H, N, D]`` batches (right padding via ``seq_lens``) and ``attention_saliency_varlen`` for
packed ``[total, H, D]`` tokens with ``cu_seqlens``. Both return fp32, head-summed statistics
(:class:`SaliencyStats`); the O(n) normalisation to ``alpha`` is :func:`trim_fast.saliency.token_saliency`.

Backends: ``triton`` (CUDA), ``cpu`` (the C++ extension) and ``torch`` (blockwise PyTorch, any
device; the fallback when the extension is not built). ``auto`` picks triton on CUDA and cpu
(else torch) on the CPU. The naive twin (:mod:`.naive`, which materialises attention through
:mod:`trim_fast.reference`) is the tests' oracle, not a backend.
"""
from __future__ import annotations

import importlib

import torch

from trim_fast.ops.backends import BACKENDS, resolve_backend
from trim_fast.ops.attention_saliency.counts import visible_counts
from trim_fast.types import SaliencyStats
from trim_fast.validation import check_cu_seqlens, check_finite, check_qk, check_seq_lens

_MODULES = {
    "triton": "trim_fast.ops.attention_saliency.triton",
    "cpu": "trim_fast.ops.attention_saliency.cpu",
    "torch": "trim_fast.ops.attention_saliency.blockwise",
}


def _backend_fns(name: str):
    mod = importlib.import_module(_MODULES[name])
    return mod.saliency_padded, mod.saliency_varlen


def _check_inputs(q, k, layout):
    check_qk(q, k, layout=layout)
    check_finite(q, "q")
    check_finite(k, "k")


def _check_lse(lse, shape, device):
    if lse is None:
        return None
    if tuple(lse.shape) != tuple(shape):
        raise ValueError(f"lse must have shape {tuple(shape)}, got {tuple(lse.shape)}")
    if lse.device != device:
        raise ValueError(f"lse must be on {device}, got {lse.device}")
    if torch.isnan(lse).any():
        raise ValueError("lse contains NaN")
    return lse.float().contiguous()


def _scale(q, scale):
    return float(q.shape[-1] ** -0.5 if scale is None else scale)


def _check_window(window):
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be a positive int or None, got {window!r}")


def attention_saliency(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    seq_lens: torch.Tensor | None = None,
    window: int | None = None,
    lse: torch.Tensor | None = None,
    backend: str = "auto",
) -> SaliencyStats:
    """Head-summed saliency statistics of ``softmax(scale * q k^T + mask)`` without forming it.

    q: ``[B, H, N, D]``; k: ``[B, H_kv, N, D]`` (GQA/MQA when ``H_kv < H``).
    seq_lens: ``[B]`` valid lengths (right padding); ``None``: all ``N``.
    window: sliding window (``i - j < window``), as Mistral's ``sliding_window``.
    lse: ``[B, H, N]`` row log-sum-exp of ``scale * q k^T`` from the caller's own attention
    forward; when given, the first pass is skipped.
    """
    _check_inputs(q, k, "BHND")
    _check_window(window)
    b, h, n, _ = q.shape
    seq_lens = check_seq_lens(seq_lens, b, n, q.device)
    lse = _check_lse(lse, (b, h, n), q.device)
    name = resolve_backend(backend, q.device)
    padded, _ = _backend_fns(name)
    row_entropy, col_mass, col_weighted, out_lse = padded(
        q, k, causal=causal, scale=_scale(q, scale), seq_lens=seq_lens, window=window, lse=lse)
    pos = torch.arange(n, device=q.device)[None, :]
    n_i, m_j = visible_counts(pos, seq_lens[:, None], causal=causal, window=window)
    return SaliencyStats(row_entropy, col_mass, col_weighted, out_lse, n_i, m_j, h)


def attention_saliency_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    max_seqlen: int | None = None,
    causal: bool = True,
    scale: float | None = None,
    window: int | None = None,
    lse: torch.Tensor | None = None,
    backend: str = "auto",
) -> SaliencyStats:
    """Packed twin of :func:`attention_saliency`, as ``flash_attn_varlen_func``.

    q: ``[total, H, D]``; k: ``[total, H_kv, D]``; cu_seqlens: ``[B + 1]`` int offsets.
    Returns ``[total]`` statistics and ``lse`` as ``[H, total]``.
    """
    _check_inputs(q, k, "THD")
    _check_window(window)
    total, h, _ = q.shape
    cu = check_cu_seqlens(cu_seqlens, total, q.device)
    lens = (cu[1:] - cu[:-1]).long()
    if max_seqlen is None:
        max_seqlen = int(lens.max()) if lens.numel() else 0
    elif int(lens.max()) > max_seqlen:
        raise ValueError(f"max_seqlen={max_seqlen} is below the longest sequence ({int(lens.max())})")
    lse = _check_lse(lse, (h, total), q.device)
    name = resolve_backend(backend, q.device)
    _, varlen = _backend_fns(name)
    row_entropy, col_mass, col_weighted, out_lse = varlen(
        q, k, cu, max_seqlen=max_seqlen, causal=causal, scale=_scale(q, scale), window=window, lse=lse)
    seq_id = torch.repeat_interleave(torch.arange(lens.numel(), device=q.device), lens)
    pos = torch.arange(total, device=q.device) - cu[:-1].long()[seq_id]
    n_i, m_j = visible_counts(pos, lens[seq_id], causal=causal, window=window)
    return SaliencyStats(row_entropy, col_mass, col_weighted, out_lse, n_i, m_j, h)


__all__ = ["attention_saliency", "attention_saliency_varlen", "SaliencyStats", "BACKENDS"]
