"""Input checks shared by the reference and the fast paths: every error names the problem."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_qk(q: torch.Tensor, k: torch.Tensor, *, layout: str = "BHND") -> None:
    """``q [B, H, N, D]`` and ``k [B, H_kv, N, D]`` (``layout="THD"``: ``[total, H, D]``)."""
    want = 4 if layout == "BHND" else 3
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor):
        raise TypeError("q and k must be torch tensors")
    if q.ndim != want or k.ndim != want:
        shape = "[B, H, N, D]" if layout == "BHND" else "[total_tokens, H, D]"
        raise ValueError(f"q and k must be {shape}; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.dtype not in FLOAT_DTYPES or k.dtype not in FLOAT_DTYPES:
        raise TypeError(f"q and k must be floating point; got {q.dtype} and {k.dtype}")
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must share a dtype; got {q.dtype} and {k.dtype}")
    if q.device != k.device:
        raise ValueError(f"q and k must be on one device; got {q.device} and {k.device}")
    h, h_kv = q.shape[1], k.shape[1]  # heads are dim 1 in both layouts
    if h_kv == 0 or h % h_kv != 0:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({h_kv}) for GQA")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k head dims differ: {q.shape[-1]} vs {k.shape[-1]}")
    if layout == "BHND":
        if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
            raise ValueError(
                f"q and k must share batch and sequence length; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    elif q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must have the same number of tokens; got {q.shape[0]} and {k.shape[0]}")


_FINITE_CHUNK = 1 << 20  # elements per check: no full-size boolean temporaries


def check_finite(x: torch.Tensor, name: str) -> None:
    if not x.is_floating_point():
        return
    flat = x.reshape(-1) if x.is_contiguous() else x.flatten()
    # on CUDA one pass (a chunk loop would sync per chunk); on CPU chunks keep memory O(chunk)
    step = flat.numel() if x.is_cuda else _FINITE_CHUNK
    step = max(1, step)
    for start in range(0, flat.numel(), step):
        part = flat[start:start + step]
        if not bool(torch.isfinite(part).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{name} contains {bad} NaN/Inf value(s)")


def check_seq_lens(seq_lens, batch: int, n: int, device) -> torch.Tensor:
    """Right-padding lengths ``[B]`` in ``[0, N]``; ``None`` means every sequence is full."""
    if seq_lens is None:
        return torch.full((batch,), n, dtype=torch.long, device=device)
    seq_lens = torch.as_tensor(seq_lens)
    if seq_lens.is_floating_point() or seq_lens.ndim != 1 or seq_lens.shape[0] != batch:
        raise ValueError(f"seq_lens must be an integer tensor of shape [{batch}], got "
                         f"{seq_lens.dtype} {tuple(seq_lens.shape)}")
    lo, hi = int(seq_lens.min()), int(seq_lens.max())
    if lo < 0 or hi > n:
        raise ValueError(f"seq_lens out of range: values must be in [0, {n}], got min {lo}, max {hi}")
    return seq_lens.to(device=device, dtype=torch.long)


def check_cu_seqlens(cu_seqlens, total: int, device) -> torch.Tensor:
    """Packed-sequence offsets ``[B + 1]``: start at 0, non-decreasing, end at ``total``."""
    cu = torch.as_tensor(cu_seqlens)
    if cu.is_floating_point() or cu.ndim != 1 or cu.shape[0] < 2:
        raise ValueError(f"cu_seqlens must be an integer tensor [B + 1], got {cu.dtype} {tuple(cu.shape)}")
    cu_cpu = cu.cpu()
    if int(cu_cpu[0]) != 0 or int(cu_cpu[-1]) != total or bool((cu_cpu[1:] < cu_cpu[:-1]).any()):
        raise ValueError(f"cu_seqlens must start at 0, never decrease and end at total tokens "
                         f"({total}); got {cu_cpu.tolist()[:8]}{'...' if cu.shape[0] > 8 else ''}")
    return cu.to(device=device, dtype=torch.int32)


def check_lse_finite(lse: torch.Tensor, valid: torch.Tensor) -> None:
    """A given row lse must be finite at real tokens: -inf/inf would turn exp(s - lse) into
    inf/0 silently."""
    if not bool(torch.isfinite(lse[valid]).all()):
        raise ValueError("lse must be finite at every non-padding position")
