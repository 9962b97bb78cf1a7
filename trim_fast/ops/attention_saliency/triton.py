"""Triton backend of ``attention_saliency``: SPEC section 1 statistics straight from Q/K blocks,
flash-attention style; the ``N x N`` attention is never formed (memory O(N) per head).

Two kernels share one core for both layouts (padded ``[B, H, N, D]`` + ``seq_lens`` and packed
``[total, H, D]`` + ``cu_seqlens``): each program reads its sequence's start offset and length,
and tensors are addressed through strides.

* Row pass, one program per (query block, batch*head): online max / sum-exp over key blocks gives
  ``lse_i``; alongside it ``A = sum_j 2^(t_j - m) (t_j - m)`` (``t`` = scores in log2 units, ``m``
  the running max) gives the entropy as ``H_i = ln l - ln2 * A / l`` with no cancellation against
  a large ``lse``.
* Column pass, one program per (key block, batch*head): loops over the query blocks that see its
  keys, recomputes ``p = exp(s - lse_i)`` and accumulates ``sum_i p`` and ``sum_i n_i p``
  (``n_i`` in closed form from position, length, causal flag and window).

When the caller passes ``lse`` the row pass is skipped: the column pass also reduces each tile
over its keys to ``-sum_j p log p`` and adds that partial into a per-row int64 buffer in fixed
point (``2^40`` units) with ``tl.atomic_add``. Integer addition is associative, so the result is
bit-reproducible whatever order the programs run in (float atomics would not be).
Cost per visible tile: without ``lse`` two ``q k^T`` and two exp (row pass, then column pass);
with ``lse`` one ``q k^T``, one exp and one int64 atomic per row per tile. For scale, an attention
forward does ``q k^T``, one exp and ``p v`` per tile. (A separate non-online row pass with ``lse``
known would cost as much as the online one: the max bookkeeping is cheap next to ``q k^T``.)

Head sums: every kernel writes per-head ``[B, H, N]`` (varlen ``[H, total]``) buffers, summed over
heads in torch (float64, then fp32): deterministic, unlike float atomics across heads; the extra
memory is 3 fp32 values per token per head, still O(N).

Masks (causal, sliding window, length tail, head-dim padding) are applied only on tiles that
straddle a boundary; tiles fully outside the visible band are never visited.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

from trim_fast.ops.attention_saliency.triton_kernels import (
    ENTROPY_FIXED_POINT, LOG2E, _col_pass_kernel, _row_pass_kernel)


@dataclass(frozen=True)
class BlockConfig:
    """Tiles and launch options of the row pass (query block x key block) and the column pass."""

    row_block_m: int
    row_block_n: int
    col_block_m: int
    col_block_n: int
    num_warps: int
    num_stages: int
    col_num_warps: int | None = None  # None: num_warps
    col_num_stages: int | None = None  # None: num_stages


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def block_config(head_dim: int, dtype: torch.dtype, max_seqlen: int = 0,
                 capability: tuple[int, int] | None = None) -> BlockConfig:
    """Tile sizes: small under the (slow, numpy) interpreter, where per-op overhead dominates
    (16 for short sequences so several tiles and both the masked and unmasked paths run, else 32);
    on the GPU, flash-attention-like, smaller for fp32 and head dim 256 to fit shared memory and
    registers (sm_90 registers/spills: bench/triton_sm90_compile_check.py). ``capability``: the
    device's; on Hopper (9.x) at 16-bit head dim 128, the one shape measured, the tiles the H200
    sweep picked (bench/RESULTS.md: 0.877 ms against 1.185 ms at N=4096, H=32, bf16)."""
    if interpreted():
        size = 16 if max_seqlen <= 64 else 32
        return BlockConfig(size, size, size, size, 1, 1)
    block_d = max(16, triton.next_power_of_2(head_dim))
    if block_d >= 256 or dtype == torch.float32:
        return BlockConfig(64, 32, 32, 64, 4, 2)
    if capability is not None and capability[0] == 9 and block_d == 128:
        return BlockConfig(128, 64, 32, 128, 4, 3)
    return BlockConfig(128, 64, 64, 128, 8, 3)


def _capability(device: torch.device) -> tuple[int, int] | None:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


def _check_supported(q: torch.Tensor) -> None:
    if q.dtype not in _SUPPORTED:
        raise TypeError(f"backend='triton' supports float16, bfloat16 and float32 q/k; got {q.dtype} "
                        "(use backend='torch' for float64)")
    if q.shape[-1] > 256:
        raise ValueError(f"backend='triton' supports head dims up to 256; got {q.shape[-1]}")


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _launch(q, k, lens_or_cu, lse_in, outs, *, is_varlen, num_seqs, max_seqlen, q_strides,
            k_strides, out_strides, num_heads, group, causal, scale, window, config):
    """Run the row pass (unless ``lse_in``) and the column pass into per-head buffers ``outs``
    (``entropy, lse, col_mass, col_weighted, entropy_fixed``)."""
    entropy, lse, col_mass, col_weighted, entropy_fixed = outs
    head_dim = q.shape[-1]
    block_d = max(16, triton.next_power_of_2(head_dim))
    cfg = config or block_config(head_dim, q.dtype, max_seqlen, _capability(q.device))
    window_arg = max_seqlen + 1 if window is None else min(int(window), max_seqlen + 1)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    common = dict(IS_VARLEN=is_varlen, CAUSAL=bool(causal), BLOCK_D=block_d,
                  EVEN_D=block_d == head_dim, INPUT_PRECISION=precision)
    seq_lens = lens_or_cu  # one int32 tensor serves as seq_lens or cu_seqlens (IS_VARLEN picks)
    scalars = (num_heads, group, scale * LOG2E, window_arg, head_dim)
    if lse_in is None:
        grid = (triton.cdiv(max_seqlen, cfg.row_block_m), num_seqs * num_heads)
        _row_pass_kernel[grid](
            q, k, seq_lens, lens_or_cu, lse, entropy, *q_strides, *k_strides, *out_strides,
            *scalars, BLOCK_M=cfg.row_block_m, BLOCK_N=cfg.row_block_n,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common)
        lse_for_cols = lse
    else:
        lse_for_cols = lse_in
    grid = (triton.cdiv(max_seqlen, cfg.col_block_n), num_seqs * num_heads)
    _col_pass_kernel[grid](
        q, k, seq_lens, lens_or_cu, lse_for_cols, col_mass, col_weighted, entropy_fixed,
        *q_strides, *k_strides, *out_strides, *scalars,
        FUSE_ROW_ENTROPY=lse_in is not None,
        BLOCK_M=cfg.col_block_m, BLOCK_N=cfg.col_block_n,
        num_warps=cfg.col_num_warps or cfg.num_warps,
        num_stages=cfg.col_num_stages or cfg.num_stages, **common)


def _head_sum(per_head: torch.Tensor, dim: int) -> torch.Tensor:
    return per_head.sum(dim, dtype=torch.float64).float()


def _entropy_from_fixed(entropy_fixed: torch.Tensor, dim: int) -> torch.Tensor:
    # int64 sum over heads is exact; one rounding to float at the end.
    return (entropy_fixed.sum(dim).double() / ENTROPY_FIXED_POINT).float()


def saliency_padded(q, k, *, causal, scale, seq_lens, window, lse, config: BlockConfig | None = None):
    """``q [B, H, N, D]``, ``k [B, H_kv, N, D]``, ``seq_lens [B]`` -> ``(row_entropy, col_mass,
    col_mass_weighted)`` head-summed ``[B, N]`` fp32 and ``lse [B, H, N]`` (padding: 0 / -inf)."""
    _check_supported(q)
    q, k = _last_dim_contiguous(q), _last_dim_contiguous(k)
    b, h, n, _ = q.shape
    dev = q.device
    zeros = lambda: torch.zeros(b, h, n, dtype=torch.float32, device=dev)  # noqa: E731
    entropy, col_mass, col_weighted = zeros(), zeros(), zeros()
    out_lse = torch.full((b, h, n), float("-inf"), dtype=torch.float32, device=dev)
    entropy_fixed = torch.zeros(b, h, n, dtype=torch.int64, device=dev) if lse is not None else entropy
    lse_in = None if lse is None else lse.float().contiguous()
    if b * h * n > 0:
        _launch(q, k, seq_lens.to(device=dev, dtype=torch.int32).contiguous(), lse_in,
                (entropy, out_lse, col_mass, col_weighted, entropy_fixed),
                is_varlen=False, num_seqs=b, max_seqlen=n,
                q_strides=(q.stride(0), q.stride(1), q.stride(2)),
                k_strides=(k.stride(0), k.stride(1), k.stride(2)),
                out_strides=(h * n, n, 1), num_heads=h, group=h // k.shape[1],
                causal=causal, scale=scale, window=window, config=config)
    if lse is not None:
        row_entropy = _entropy_from_fixed(entropy_fixed, 1)
        out_lse = lse_in
    else:
        row_entropy = _head_sum(entropy, 1)
    return row_entropy, _head_sum(col_mass, 1), _head_sum(col_weighted, 1), out_lse


def saliency_varlen(q, k, cu_seqlens, *, max_seqlen, causal, scale, window, lse,
                    config: BlockConfig | None = None):
    """Packed twin: ``q [total, H, D]``, ``k [total, H_kv, D]``, ``cu_seqlens [B + 1]`` ->
    ``[total]`` head-summed fp32 statistics and ``lse [H, total]``."""
    _check_supported(q)
    q, k = _last_dim_contiguous(q), _last_dim_contiguous(k)
    total, h, _ = q.shape
    dev = q.device
    num_seqs = cu_seqlens.numel() - 1
    zeros = lambda: torch.zeros(h, total, dtype=torch.float32, device=dev)  # noqa: E731
    entropy, col_mass, col_weighted = zeros(), zeros(), zeros()
    out_lse = torch.full((h, total), float("-inf"), dtype=torch.float32, device=dev)
    entropy_fixed = torch.zeros(h, total, dtype=torch.int64, device=dev) if lse is not None else entropy
    lse_in = None if lse is None else lse.float().contiguous()
    if total * h > 0 and max_seqlen > 0:
        _launch(q, k, cu_seqlens.to(device=dev, dtype=torch.int32).contiguous(), lse_in,
                (entropy, out_lse, col_mass, col_weighted, entropy_fixed),
                is_varlen=True, num_seqs=num_seqs, max_seqlen=int(max_seqlen),
                q_strides=(0, q.stride(1), q.stride(0)),
                k_strides=(0, k.stride(1), k.stride(0)),
                out_strides=(0, total, 1), num_heads=h, group=h // k.shape[1],
                causal=causal, scale=scale, window=window, config=config)
    if lse is not None:
        row_entropy = _entropy_from_fixed(entropy_fixed, 0)
        out_lse = lse_in
    else:
        row_entropy = _head_sum(entropy, 0)
    return row_entropy, _head_sum(col_mass, 0), _head_sum(col_weighted, 0), out_lse


__all__ = ["saliency_padded", "saliency_varlen", "BlockConfig", "block_config"]
