"""The Triton JIT code of the ``attention_saliency`` backend: the row pass and column pass kernels
and their helpers (the host side, tiles and launches, is :mod:`.triton`, whose docstring says
what each pass computes). Jit code reads only this module's constexpr globals."""
from __future__ import annotations

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


@triton.jit
def _span(part: tl.constexpr, lo, full_lo, full_hi, hi):
    """Bounds of one of a pass's three tile ranges: 0 the masked head, 1 the unmasked middle
    (no masks compiled in), 2 the masked tail."""
    if part == 0:
        return lo, full_lo
    elif part == 1:
        return full_lo, full_hi
    else:
        return full_hi, hi


@triton.jit
def _tile_offsets(head_dim, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row, column and head-dim offsets of a tile, and which head-dim lanes are real."""
    offs_d = tl.arange(0, BLOCK_D)
    return tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), offs_d, offs_d < head_dim


@triton.jit
def _program_sequence(num_heads, seq_lens_ptr, cu_seqlens_ptr, IS_VARLEN: tl.constexpr):
    """(batch row, head, first token, length) of this program's (sequence, head) pair, grid
    axis 1."""
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    start, length = _sequence_bounds(b, seq_lens_ptr, cu_seqlens_ptr, IS_VARLEN)
    return b, pid_bh % num_heads, start, length


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
    b, h, start, length = _program_sequence(num_heads, seq_lens_ptr, cu_seqlens_ptr, IS_VARLEN)
    i0 = tl.program_id(0) * BLOCK_M
    if i0 < length:
        offs_m, offs_n, offs_d, d_ok = _tile_offsets(head_dim, BLOCK_M, BLOCK_N, BLOCK_D)
        rows = i0 + offs_m
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
        for part in tl.static_range(3):  # masked head tiles, unmasked middle, masked tail
            j_lo, j_hi = _span(part, lo, full_lo, full_hi, hi)
            for j0 in range(j_lo, j_hi, BLOCK_N):
                m_i, l_i, a_i = _row_tile(q, k_ptrs, j0, rows, offs_n, d_ok, length, window,
                                          qk_scale_log2, m_i, l_i, a_i, CAUSAL, part != 1,
                                          EVEN_D, INPUT_PRECISION)
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
    b, h, start, length = _program_sequence(num_heads, seq_lens_ptr, cu_seqlens_ptr, IS_VARLEN)
    j0 = tl.program_id(0) * BLOCK_N
    if j0 < length:
        offs_m, offs_n, offs_d, d_ok = _tile_offsets(head_dim, BLOCK_M, BLOCK_N, BLOCK_D)
        cols = j0 + offs_n
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
        for part in tl.static_range(3):  # masked head tiles, unmasked middle, masked tail
            i_lo, i_hi = _span(part, lo, full_lo, full_hi, hi)
            for i0 in range(i_lo, i_hi, BLOCK_M):
                col_mass, col_weighted = _col_tile(
                    q_ptrs, k_t, i0, cols, offs_m, d_ok, length, window, qk_scale_log2, lse_ptr,
                    entropy_fixed_ptr, row_offs, col_mass, col_weighted,
                    CAUSAL, part != 1, EVEN_D, FUSE_ROW_ENTROPY, INPUT_PRECISION)
                q_ptrs += BLOCK_M * stride_qn
                row_offs += BLOCK_M * stride_on

        out = o_base + j0.to(tl.int64) * stride_on + offs_n * stride_on
        col_ok = cols < length
        tl.store(col_mass_ptr + out, col_mass, mask=col_ok)
        tl.store(col_weighted_ptr + out, col_weighted, mask=col_ok)


# ------------------------------------------------------------------------------------------------
# Launch
# ------------------------------------------------------------------------------------------------
