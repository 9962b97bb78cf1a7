"""``backend="torch"``: blockwise PyTorch on any device; the fallback when ``trim_fast._C`` is not
built. Same two passes as the C++ kernel, over ``block x block`` score tiles, so memory is
O(n * block) per head, never ``n x n``:

1. (skipped when ``lse`` is given) online max / sum-exp per row -> ``lse_i``;
2. ``log p_ij = (s_ij - m_i) - log_sum_i`` (``lse = m + log_sum``); ``H_i -= p_ij log p_ij``
   (every term >= 0), ``col_mass_j += p_ij``, ``col_mass_weighted_j += n_i p_ij``.

Computes in fp32 (fp16/bf16 are upcast); returns fp32.
"""
from __future__ import annotations

import torch

from trim_fast.validation import check_lse_finite

BLOCK = 128


def _row_intervals(n: int, lens: torch.Tensor, *, causal: bool, window: int | None):
    """Keys of row ``i`` are ``[lo_i, hi_i)``; ``[B, N]`` each, ``lo >= hi`` on padding rows."""
    pos = torch.arange(n, device=lens.device)[None, :]
    lens = lens[:, None]
    lo = (pos - window + 1).clamp(min=0) if window is not None else torch.zeros_like(pos)
    if causal:
        hi = pos + 1
    elif window is not None:
        hi = torch.minimum(pos + window, lens)
    else:
        hi = lens
    hi = torch.where(pos < lens, torch.broadcast_tensors(hi, lens)[0], torch.zeros_like(lens))
    lo = torch.broadcast_tensors(lo, hi)[0]
    return lo, hi


def _key_span(qs: int, qe: int, n: int, *, causal: bool, window: int | None) -> tuple[int, int]:
    """Keys any row of ``[qs, qe)`` may see (before padding): block skipping."""
    lo = max(0, qs - window + 1) if window is not None else 0
    if causal:
        hi = qe
    elif window is not None:
        hi = min(n, qe - 1 + window)
    else:
        hi = n
    return lo, hi


def _scores(q_blk: torch.Tensor, k_blk: torch.Tensor) -> torch.Tensor:
    """``q_blk [B, H, bq, D]`` (pre-scaled) x ``k_blk [B, H_kv, bk, D]`` -> ``[B, H, bq, bk]``;
    each KV head serves its ``H / H_kv`` query heads in one matmul (GQA)."""
    b, h, bq, d = q_blk.shape
    h_kv = k_blk.shape[1]
    grouped = q_blk.reshape(b, h_kv, (h // h_kv) * bq, d)
    return torch.matmul(grouped, k_blk.transpose(-1, -2)).reshape(b, h, bq, k_blk.shape[2])


def _padded(q, k, lens, *, causal, scale, window, lse, block):
    b, h, n, _ = q.shape
    q = q.float() * scale
    k = k.float()
    lo, hi = _row_intervals(n, lens, causal=causal, window=window)
    valid_row = hi > lo  # [B, N]
    n_i = (hi - lo).clamp(min=0).float()
    max_len = int(lens.max()) if lens.numel() else 0
    neg_inf = float("-inf")
    cols = torch.arange(n, device=q.device)

    def tile(qs, qe, ks, ke):
        s = _scores(q[:, :, qs:qe], k[:, :, ks:ke])
        j = cols[ks:ke][None, None, :]
        visible = (j >= lo[:, qs:qe, None]) & (j < hi[:, qs:qe, None])  # [B, bq, bk]
        return s, visible[:, None]

    def key_blocks(qs, qe):
        klo, khi = _key_span(qs, qe, n, causal=causal, window=window)
        khi = min(khi, max_len)
        start = (klo // block) * block
        return [(ks, min(ks + block, khi)) for ks in range(start, khi, block)]

    # s - lse is formed as (s - row_shift) - row_log_sum: exact near the row maximum, where an
    # fp32 lse would round at ulp(|lse|) (large for big logits). A given lse: shift = lse, 0.
    if lse is None:
        lse = torch.full((b, h, n), neg_inf, device=q.device)
        row_shift = torch.zeros((b, h, n), device=q.device)
        row_log_sum = torch.zeros((b, h, n), device=q.device)
        for qs in range(0, max_len, block):
            qe = min(qs + block, max_len)
            row_max = torch.full((b, h, qe - qs), neg_inf, device=q.device)
            row_sum = torch.zeros((b, h, qe - qs), device=q.device)
            for ks, ke in key_blocks(qs, qe):
                s, visible = tile(qs, qe, ks, ke)
                s = s.masked_fill(~visible, neg_inf)
                new_max = torch.maximum(row_max, s.amax(-1))
                safe_max = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
                row_sum = row_sum * torch.exp(row_max - safe_max) + torch.exp(
                    s - safe_max[..., None]).sum(-1)
                row_max = new_max
            lse[:, :, qs:qe] = row_max + torch.log(row_sum)
            row_shift[:, :, qs:qe] = row_max
            row_log_sum[:, :, qs:qe] = torch.log(row_sum)
    else:
        lse = lse.to(q.device, torch.float32).clone()
        row_shift = lse
        row_log_sum = torch.zeros_like(lse)
    lse = lse.masked_fill(~valid_row[:, None], neg_inf)

    row_shift = row_shift.masked_fill(~valid_row[:, None], 0.0)
    row_log_sum = row_log_sum.masked_fill(~valid_row[:, None], 0.0)
    entropy = torch.zeros((b, h, n), device=q.device)
    col_mass = torch.zeros((b, n), device=q.device)
    col_weighted = torch.zeros((b, n), device=q.device)
    for qs in range(0, max_len, block):
        qe = min(qs + block, max_len)
        shift = row_shift[:, :, qs:qe, None]
        log_sum = row_log_sum[:, :, qs:qe, None]
        for ks, ke in key_blocks(qs, qe):
            s, visible = tile(qs, qe, ks, ke)
            log_p = (s - shift) - log_sum
            # exp(-inf) = 0 off the mask, where scores may be far above lse (exp -> inf).
            p = torch.exp(log_p.masked_fill(~visible, neg_inf))
            entropy[:, :, qs:qe] -= (p * log_p.masked_fill(~visible, 0.0)).sum(-1)
            col_mass[:, ks:ke] += p.sum((1, 2))
            col_weighted[:, ks:ke] += (p * n_i[:, None, qs:qe, None]).sum((1, 2))
    row_entropy = entropy.clamp(min=0.0).sum(1)
    return row_entropy, col_mass, col_weighted, lse


def saliency_padded(q, k, *, causal, scale, seq_lens, window, lse, block: int = BLOCK):
    """q ``[B, H, N, D]``, k ``[B, H_kv, N, D]``, seq_lens ``[B]`` ->
    ``(row_entropy [B, N], col_mass [B, N], col_mass_weighted [B, N], lse [B, H, N])``."""
    lens = seq_lens.to(q.device, torch.long)
    if lse is not None:
        valid = torch.arange(q.shape[2], device=q.device)[None, None, :] < lens[:, None, None]
        check_lse_finite(lse, valid.expand(lse.shape))
    with torch.no_grad():
        return _padded(q, k, lens, causal=causal, scale=scale, window=window, lse=lse, block=block)


def saliency_varlen(q, k, cu_seqlens, *, max_seqlen, causal, scale, window, lse,
                    block: int = BLOCK):
    """q ``[T, H, D]``, k ``[T, H_kv, D]``, cu_seqlens ``[B + 1]`` -> ``([T], [T], [T], lse [H, T])``;
    one padded call per packed sequence (no padded copy of the batch)."""
    del max_seqlen
    total, h, _ = q.shape
    if lse is not None:
        check_lse_finite(lse, torch.ones_like(lse, dtype=torch.bool))
    row_entropy = torch.zeros(total, device=q.device)
    col_mass = torch.zeros(total, device=q.device)
    col_weighted = torch.zeros(total, device=q.device)
    out_lse = torch.full((h, total), float("-inf"), device=q.device)
    cu = cu_seqlens.tolist()
    with torch.no_grad():
        for s, e in zip(cu[:-1], cu[1:]):
            if e == s:
                continue
            q_seq = q[s:e].transpose(0, 1)[None]
            k_seq = k[s:e].transpose(0, 1)[None]
            lse_seq = None if lse is None else lse[:, s:e][None]
            lens = torch.tensor([e - s], device=q.device)
            ent, cm, cw, l_seq = _padded(q_seq, k_seq, lens, causal=causal, scale=scale,
                                         window=window, lse=lse_seq, block=block)
            row_entropy[s:e], col_mass[s:e], col_weighted[s:e] = ent[0], cm[0], cw[0]
            out_lse[:, s:e] = l_seq[0]
    return row_entropy, col_mass, col_weighted, out_lse
