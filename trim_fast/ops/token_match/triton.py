"""Triton kernel: fused token matching + pooling, one program per (example, token split).

Each program walks its share of one example's tokens in blocks of ``BLOCK_N``; for matched tokens it
accumulates ``h . f_row`` and ``h . h`` over ``d`` in blocks of ``BLOCK_D`` (fingerprint rows
are gathered by row index), then ``s = dot / ||h||``; fallback tokens take their precomputed
score. The block reduces to weighted sum, weight sum, max and counts in registers and writes
one partial per program; a fixed-order torch reduction over the splits finishes, so the result
is deterministic (no atomics). Splitting the tokens keeps a GPU busy when the batch has few
examples. Math is fp32 whatever the hidden dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _token_match_pool_kernel(
    hidden_ptr, rows_ptr, fb_ptr, w_ptr, vec_ptr,
    sum_ws_ptr, sum_w_ptr, max_ptr, n_scored_ptr, n_matched_ptr, n_bad_ptr,
    N, D, TOKENS_PER_SPLIT, NUM_SPLITS,
    stride_hb, stride_hn, stride_hd,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    n_start = split * TOKENS_PER_SPLIT
    n_stop = tl.minimum(n_start + TOKENS_PER_SPLIT, N)
    acc_ws = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc_w = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    acc_ns = tl.zeros((BLOCK_N,), dtype=tl.int32)
    acc_nm = tl.zeros((BLOCK_N,), dtype=tl.int32)
    acc_bad = tl.zeros((BLOCK_N,), dtype=tl.int32)
    offs_d0 = tl.arange(0, BLOCK_D)
    for n0 in range(n_start, n_stop, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_n = offs_n < n_stop
        row = tl.load(rows_ptr + b * N + offs_n, mask=in_n, other=-2)
        matched = row >= 0
        safe_row = tl.where(matched, row, 0)
        dot = tl.zeros((BLOCK_N,), dtype=tl.float32)
        ss = tl.zeros((BLOCK_N,), dtype=tl.float32)
        h_base = hidden_ptr + b * stride_hb + offs_n[:, None].to(tl.int64) * stride_hn
        f_base = vec_ptr + safe_row[:, None].to(tl.int64) * D
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + offs_d0
            m = matched[:, None] & (offs_d[None, :] < D)
            h = tl.load(h_base + offs_d[None, :] * stride_hd, mask=m, other=0.0).to(tl.float32)
            f = tl.load(f_base + offs_d[None, :], mask=m, other=0.0)
            dot += tl.sum(h * f, axis=1)
            ss += tl.sum(h * h, axis=1)
        # NaN/Inf or zero rows have no direction: counted as bad, never scored.
        good = (ss > 0.0) & (ss < float("inf")) & (dot == dot) & (tl.abs(dot) < float("inf"))
        bad = matched & ~good
        ok_matched = matched & good
        fb = tl.load(fb_ptr + b * N + offs_n, mask=in_n, other=0.0)
        s = tl.where(ok_matched, dot / tl.sqrt(tl.where(ok_matched, ss, 1.0)), fb)
        scored = ok_matched | (row == -1)
        w = tl.load(w_ptr + b * N + offs_n, mask=in_n, other=0.0)
        acc_ws += tl.where(scored, w * s, 0.0)
        acc_w += tl.where(scored, w, 0.0)
        acc_max = tl.maximum(acc_max, tl.where(scored, s, float("-inf")))
        acc_ns += scored.to(tl.int32)
        acc_nm += ok_matched.to(tl.int32)
        acc_bad += bad.to(tl.int32)
    out = b * NUM_SPLITS + split
    tl.store(sum_ws_ptr + out, tl.sum(acc_ws, axis=0))
    tl.store(sum_w_ptr + out, tl.sum(acc_w, axis=0))
    tl.store(max_ptr + out, tl.max(acc_max, axis=0))
    tl.store(n_scored_ptr + out, tl.sum(acc_ns, axis=0))
    tl.store(n_matched_ptr + out, tl.sum(acc_nm, axis=0))
    tl.store(n_bad_ptr + out, tl.sum(acc_bad, axis=0))


def _default_splits(b: int, n: int, block_n: int, device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    # About 4 programs per SM, but never fewer than 4 token blocks per program.
    return max(1, min(triton.cdiv(n, 4 * block_n), triton.cdiv(4 * sms, max(b, 1))))


def pool_triton(hidden, rows, fallback_score, weights, vectors, *, block_n: int = 16,
                block_d: int = 128, num_splits: int | None = None):
    b, n, d = hidden.shape
    dev = hidden.device
    if hidden.stride(-1) != 1:
        hidden = hidden.contiguous()
    rows = rows.contiguous()
    fb = fallback_score.float().contiguous()
    w = weights.float().contiguous()
    vec = vectors.float().contiguous()
    if b == 0 or n == 0:
        zeros = torch.zeros(b, dtype=torch.float64, device=dev)
        return (zeros, zeros.clone(), torch.full((b,), float("-inf"), device=dev),
                torch.zeros(b, dtype=torch.long, device=dev),
                torch.zeros(b, dtype=torch.long, device=dev), 0)
    splits = num_splits or _default_splits(b, n, block_n, dev)
    splits = max(1, min(splits, triton.cdiv(n, block_n)))
    per_split = triton.cdiv(triton.cdiv(n, splits), block_n) * block_n
    splits = triton.cdiv(n, per_split)
    sum_ws = torch.empty(b, splits, dtype=torch.float32, device=dev)
    sum_w = torch.empty(b, splits, dtype=torch.float32, device=dev)
    mx = torch.empty(b, splits, dtype=torch.float32, device=dev)
    n_scored = torch.empty(b, splits, dtype=torch.int32, device=dev)
    n_matched = torch.empty(b, splits, dtype=torch.int32, device=dev)
    n_bad = torch.empty(b, splits, dtype=torch.int32, device=dev)
    block_d = min(block_d, triton.next_power_of_2(d))
    _token_match_pool_kernel[(b, splits)](
        hidden, rows, fb, w, vec, sum_ws, sum_w, mx, n_scored, n_matched, n_bad,
        n, d, per_split, splits, hidden.stride(0), hidden.stride(1), hidden.stride(2),
        BLOCK_N=block_n, BLOCK_D=block_d,
    )
    return (sum_ws.double().sum(1), sum_w.double().sum(1), mx.amax(1), n_scored.long().sum(1),
            n_matched.long().sum(1), int(n_bad.sum()))
