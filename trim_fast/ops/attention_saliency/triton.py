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
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# Fixed-point unit of the fused (lse given) row entropy. With p clamped to <= 1 each -p ln p is in
# [0, 1/e], so a row's int64 sum cannot overflow below ~2e7 keys; 2^-40 nats is finer than the fp32
# per-tile partials it stores.
ENTROPY_FIXED_POINT = 2.0 ** 40
# Finite "minus infinity": exp2 of it is 0 and 0 * it is 0 (no NaN from -inf * 0).
NEG_BIG = -1.0e30
# The same constants as Triton constexprs (jit code may only read constexpr globals).
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(LN2)
_NEG_BIG = tl.constexpr(NEG_BIG)
_FIXED_POINT = tl.constexpr(ENTROPY_FIXED_POINT)


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


def block_config(head_dim: int, dtype: torch.dtype, max_seqlen: int = 0) -> BlockConfig:
    """Tile sizes: small under the (slow, numpy) interpreter, where per-op overhead dominates
    (16 for short sequences so several tiles and both the masked and unmasked paths run, else 32);
    flash-attention-like on the GPU, smaller for fp32 and head dim 256 to fit shared memory and
    registers (sm_90 registers/spills: bench/triton_sm90_compile_check.py). Not yet tuned on a
    GPU: bench/gpu_attention_saliency.py --sweep times alternatives."""
    if interpreted():
        size = 16 if max_seqlen <= 64 else 32
        return BlockConfig(size, size, size, size, 1, 1)
    block_d = max(16, triton.next_power_of_2(head_dim))
    if block_d >= 256 or dtype == torch.float32:
        return BlockConfig(64, 32, 32, 64, 4, 2)
    return BlockConfig(128, 64, 64, 128, 8, 3)


# ------------------------------------------------------------------------------------------------
# Kernel helpers
# ------------------------------------------------------------------------------------------------


@triton.jit
def _sequence_bounds(b, seq_lens_ptr, cu_seqlens_ptr, IS_VARLEN: tl.constexpr):
    """(first token offset, length) of sequence ``b`` in either layout."""
    if IS_VARLEN:
        start = tl.load(cu_seqlens_ptr + b)
        length = tl.load(cu_seqlens_ptr + b + 1) - start
    else:
        length = tl.load(seq_lens_ptr + b)
        start = length * 0  # an int32 tensor zero, like the varlen branch's start
    return start, length


@triton.jit
def _visible(rows, cols, length, window, CAUSAL: tl.constexpr):
    """[M, N] bool: may query ``rows`` see key ``cols`` (positions within the sequence)?"""
    i = rows[:, None]
    j = cols[None, :]
    ok = (i < length) & (j < length) & (i - j < window)
    if CAUSAL:
        ok = ok & (j <= i)
    else:
        ok = ok & (j - i < window)
    return ok


@triton.jit
def _visible_keys(rows, length, window, CAUSAL: tl.constexpr):
    """n_i in closed form (``window`` > length means no window)."""
    if CAUSAL:
        n = tl.minimum(rows + 1, window)
    else:
        n = tl.minimum(rows + window - 1, length - 1) - tl.maximum(rows - window + 1, 0) + 1
    return n


@triton.jit
def _full_tile_span(lo, hi, first_full, last_full, STEP: tl.constexpr):
    """Tiles start at ``lo, lo + STEP, ...`` below ``hi``; those starting in ``[first_full,
    last_full]`` need no mask. Returns the (start, end) offsets of that unmasked run, so a loop is
    split into masked head / unmasked body / masked tail (the flash-attention layout, which keeps
    branches out of the pipelined loop)."""
    num_tiles = (hi - lo + STEP - 1) // STEP
    skip = tl.where(first_full > lo, (first_full - lo + STEP - 1) // STEP, 0)
    skip = tl.minimum(skip, num_tiles)
    upto = tl.where(last_full >= lo, (last_full - lo) // STEP + 1, 0)
    upto = tl.minimum(tl.maximum(upto, skip), num_tiles)
    return lo + skip * STEP, lo + upto * STEP


@triton.jit
def _load_rows(ptrs, rows, length, d_ok, MASK_ROWS: tl.constexpr, EVEN_D: tl.constexpr):
    """[rows, BLOCK_D] tile, zero past the sequence end and past the head dim."""
    if MASK_ROWS:
        if EVEN_D:
            x = tl.load(ptrs, mask=rows[:, None] < length, other=0.0)
        else:
            x = tl.load(ptrs, mask=(rows[:, None] < length) & d_ok[None, :], other=0.0)
    else:
        if EVEN_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=d_ok[None, :], other=0.0)
    return x


@triton.jit
def _load_keys_t(ptrs, cols, length, d_ok, MASK_COLS: tl.constexpr, EVEN_D: tl.constexpr):
    """[BLOCK_D, cols] transposed key tile, zero past the sequence end and past the head dim."""
    if MASK_COLS:
        if EVEN_D:
            x = tl.load(ptrs, mask=cols[None, :] < length, other=0.0)
        else:
            x = tl.load(ptrs, mask=(cols[None, :] < length) & d_ok[:, None], other=0.0)
    else:
        if EVEN_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=d_ok[:, None], other=0.0)
    return x


# ------------------------------------------------------------------------------------------------
# Row pass: lse and entropy per (row, head)
# ------------------------------------------------------------------------------------------------


@triton.jit
def _row_tile(q, k_ptrs, j0, rows, offs_n, d_ok, length, window, qk_scale_log2, m_i, l_i, a_i,
              CAUSAL: tl.constexpr, MASK: tl.constexpr, EVEN_D: tl.constexpr,
              INPUT_PRECISION: tl.constexpr):
    """One online-softmax step over key tile ``j0``; scores in log2 units."""
    cols = j0 + offs_n
    k_t = _load_keys_t(k_ptrs, cols, length, d_ok, MASK, EVEN_D)
    t = tl.dot(q, k_t, input_precision=INPUT_PRECISION) * qk_scale_log2
    if MASK:
        t = tl.where(_visible(rows, cols, length, window, CAUSAL), t, _NEG_BIG)
    m_new = tl.maximum(m_i, tl.max(t, 1))
    alpha = tl.math.exp2(m_i - m_new)
    shifted = t - m_new[:, None]
    p = tl.math.exp2(shifted)
    # A(m) = sum 2^(t - m) (t - m) moves to the new max as alpha * (A + (m_old - m_new) * l).
    a_i = alpha * (a_i + (m_i - m_new) * l_i) + tl.sum(p * shifted, 1)
    l_i = alpha * l_i + tl.sum(p, 1)
    return m_new, l_i, a_i


@triton.jit
def _row_pass_kernel(
    q_ptr, k_ptr, seq_lens_ptr, cu_seqlens_ptr, lse_ptr, entropy_ptr,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_ob, stride_oh, stride_on,
    num_heads, group, qk_scale_log2, window, head_dim,
    IS_VARLEN: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    start, length = _sequence_bounds(b, seq_lens_ptr, cu_seqlens_ptr, IS_VARLEN)
    i0 = pid_m * BLOCK_M
    if i0 < length:
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        rows = i0 + offs_m
        d_ok = offs_d < head_dim
        q_base = (q_ptr + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
                  + (start + i0).to(tl.int64) * stride_qn)
        q = _load_rows(q_base + offs_m[:, None] * stride_qn + offs_d[None, :], rows, length, d_ok,
                       True, EVEN_D)
        k_base = (k_ptr + b.to(tl.int64) * stride_kb + (h // group).to(tl.int64) * stride_kh
                  + start.to(tl.int64) * stride_kn)

        m_i = tl.full([BLOCK_M], _NEG_BIG, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        a_i = tl.zeros([BLOCK_M], tl.float32)  # sum 2^(t - m) (t - m)
        i_last = tl.minimum(i0 + BLOCK_M, length) - 1
        lo = tl.maximum(i0 - window + 1, 0)
        if CAUSAL:
            hi = i_last + 1
            last_full = tl.minimum(length - BLOCK_N, i0 - BLOCK_N + 1)
        else:
            hi = tl.minimum(length, i_last + window)
            last_full = tl.minimum(length - BLOCK_N, i0 + window - BLOCK_N)
        # Rows past the end need no mask here: they are zero and never stored.
        first_full = tl.maximum(i0 + BLOCK_M - window, 0)
        full_lo, full_hi = _full_tile_span(lo, hi, first_full, last_full, BLOCK_N)

        # 64-bit pointers advanced per tile: packed batches can exceed 2^31 elements.
        k_ptrs = (k_base + lo.to(tl.int64) * stride_kn + offs_n[None, :] * stride_kn
                  + offs_d[:, None])
        for j0 in range(lo, full_lo, BLOCK_N):
            m_i, l_i, a_i = _row_tile(q, k_ptrs, j0, rows, offs_n, d_ok, length, window,
                                      qk_scale_log2, m_i, l_i, a_i, CAUSAL, True, EVEN_D,
                                      INPUT_PRECISION)
            k_ptrs += BLOCK_N * stride_kn
        for j0 in range(full_lo, full_hi, BLOCK_N):
            m_i, l_i, a_i = _row_tile(q, k_ptrs, j0, rows, offs_n, d_ok, length, window,
                                      qk_scale_log2, m_i, l_i, a_i, CAUSAL, False, EVEN_D,
                                      INPUT_PRECISION)
            k_ptrs += BLOCK_N * stride_kn
        for j0 in range(full_hi, hi, BLOCK_N):
            m_i, l_i, a_i = _row_tile(q, k_ptrs, j0, rows, offs_n, d_ok, length, window,
                                      qk_scale_log2, m_i, l_i, a_i, CAUSAL, True, EVEN_D,
                                      INPUT_PRECISION)
            k_ptrs += BLOCK_N * stride_kn

        lse = (m_i + tl.math.log2(l_i)) * _LN2
        entropy = tl.log(l_i) - _LN2 * a_i / l_i
        out = (b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
               + (start + i0).to(tl.int64) * stride_on + offs_m * stride_on)
        row_ok = rows < length
        tl.store(lse_ptr + out, lse, mask=row_ok)
        tl.store(entropy_ptr + out, entropy, mask=row_ok)


# ------------------------------------------------------------------------------------------------
# Column pass: column mass and n_i-weighted column mass per (key, head)
# ------------------------------------------------------------------------------------------------


@triton.jit
def _col_tile(q_ptrs, k_t, i0, cols, offs_m, d_ok, length, window, qk_scale_log2, lse_ptr,
              entropy_fixed_ptr, row_offs, col_mass, col_weighted,
              CAUSAL: tl.constexpr, MASK: tl.constexpr, EVEN_D: tl.constexpr,
              FUSE_ROW_ENTROPY: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """Accumulate query tile ``i0``'s probabilities into the key block's column sums."""
    rows = i0 + offs_m
    row_ok = rows < length
    q = _load_rows(q_ptrs, rows, length, d_ok, MASK, EVEN_D)
    if MASK:
        lse2 = tl.load(lse_ptr + row_offs, mask=row_ok, other=0.0) * _LOG2E
    else:
        lse2 = tl.load(lse_ptr + row_offs) * _LOG2E
    n_i = _visible_keys(rows, length, window, CAUSAL).to(tl.float32)
    t = tl.dot(q, k_t, input_precision=INPUT_PRECISION) * qk_scale_log2
    shifted = t - lse2[:, None]
    if FUSE_ROW_ENTROPY:
        shifted = tl.minimum(shifted, 0.0)  # p <= 1 keeps each -p log2 p in [0, 0.531]
    p = tl.math.exp2(shifted)
    if MASK:
        p = tl.where(_visible(rows, cols, length, window, CAUSAL), p, 0.0)
    col_mass += tl.sum(p, 0)
    col_weighted += tl.sum(p * n_i[:, None], 0)
    if FUSE_ROW_ENTROPY:
        # -sum_j p log p over this tile's keys, in nats, to fixed point; int adds commute.
        part = -tl.sum(p * shifted, 1) * (_LN2 * _FIXED_POINT)
        tl.atomic_add(entropy_fixed_ptr + row_offs, part.to(tl.int64), mask=row_ok)
    return col_mass, col_weighted


@triton.jit
def _col_pass_kernel(
    q_ptr, k_ptr, seq_lens_ptr, cu_seqlens_ptr, lse_ptr, col_mass_ptr, col_weighted_ptr,
    entropy_fixed_ptr,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_ob, stride_oh, stride_on,
    num_heads, group, qk_scale_log2, window, head_dim,
    IS_VARLEN: tl.constexpr, CAUSAL: tl.constexpr, FUSE_ROW_ENTROPY: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    start, length = _sequence_bounds(b, seq_lens_ptr, cu_seqlens_ptr, IS_VARLEN)
    j0 = pid_n * BLOCK_N
    if j0 < length:
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        cols = j0 + offs_n
        d_ok = offs_d < head_dim
        k_base = (k_ptr + b.to(tl.int64) * stride_kb + (h // group).to(tl.int64) * stride_kh
                  + (start + j0).to(tl.int64) * stride_kn)
        k_t = _load_keys_t(k_base + offs_n[None, :] * stride_kn + offs_d[:, None], cols, length,
                           d_ok, True, EVEN_D)
        q_base = (q_ptr + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
                  + start.to(tl.int64) * stride_qn)
        o_base = b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + start.to(tl.int64) * stride_on

        col_mass = tl.zeros([BLOCK_N], tl.float32)
        col_weighted = tl.zeros([BLOCK_N], tl.float32)
        j_last = tl.minimum(j0 + BLOCK_N, length) - 1
        hi = tl.minimum(length, j_last + window)
        last_full = tl.minimum(length - BLOCK_M, j0 + window - BLOCK_M)
        if CAUSAL:
            lo = j0 - j0 % BLOCK_M  # keep query tiles aligned to the row pass's
            first_full = j0 + BLOCK_N - 1
        else:
            lo = tl.maximum(j0 - window + 1, 0)
            first_full = j0 + BLOCK_N - window
        if j0 + BLOCK_N > length:  # the key block itself runs past the end: mask every tile
            last_full = lo - 1
        full_lo, full_hi = _full_tile_span(lo, hi, first_full, last_full, BLOCK_M)

        q_ptrs = (q_base + lo.to(tl.int64) * stride_qn + offs_m[:, None] * stride_qn
                  + offs_d[None, :])
        row_offs = o_base + lo.to(tl.int64) * stride_on + offs_m * stride_on
        for i0 in range(lo, full_lo, BLOCK_M):
            col_mass, col_weighted = _col_tile(
                q_ptrs, k_t, i0, cols, offs_m, d_ok, length, window, qk_scale_log2, lse_ptr,
                entropy_fixed_ptr, row_offs, col_mass, col_weighted,
                CAUSAL, True, EVEN_D, FUSE_ROW_ENTROPY, INPUT_PRECISION)
            q_ptrs += BLOCK_M * stride_qn
            row_offs += BLOCK_M * stride_on
        for i0 in range(full_lo, full_hi, BLOCK_M):
            col_mass, col_weighted = _col_tile(
                q_ptrs, k_t, i0, cols, offs_m, d_ok, length, window, qk_scale_log2, lse_ptr,
                entropy_fixed_ptr, row_offs, col_mass, col_weighted,
                CAUSAL, False, EVEN_D, FUSE_ROW_ENTROPY, INPUT_PRECISION)
            q_ptrs += BLOCK_M * stride_qn
            row_offs += BLOCK_M * stride_on
        for i0 in range(full_hi, hi, BLOCK_M):
            col_mass, col_weighted = _col_tile(
                q_ptrs, k_t, i0, cols, offs_m, d_ok, length, window, qk_scale_log2, lse_ptr,
                entropy_fixed_ptr, row_offs, col_mass, col_weighted,
                CAUSAL, True, EVEN_D, FUSE_ROW_ENTROPY, INPUT_PRECISION)
            q_ptrs += BLOCK_M * stride_qn
            row_offs += BLOCK_M * stride_on

        out = o_base + j0.to(tl.int64) * stride_on + offs_n * stride_on
        col_ok = cols < length
        tl.store(col_mass_ptr + out, col_mass, mask=col_ok)
        tl.store(col_weighted_ptr + out, col_weighted, mask=col_ok)


# ------------------------------------------------------------------------------------------------
# Launch
# ------------------------------------------------------------------------------------------------

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
    cfg = config or block_config(head_dim, q.dtype, max_seqlen)
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
