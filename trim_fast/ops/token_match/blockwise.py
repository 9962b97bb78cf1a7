"""Blockwise PyTorch twin of the fused kernel: any device, bounded memory (tokens in blocks).

Only tokens that are scored are read; matched ones are normalised and dotted with their
fingerprint (a gather), fallback ones take their precomputed score.
"""
from __future__ import annotations

import torch

# Tokens per block: a [block, d] gather of hidden rows and one of fingerprints (64 MiB each
# at the default); big blocks keep the number of (thread-synchronising) ops low.
_BLOCK_BYTES = 128 << 20


def matched_cosines(hidden_flat: torch.Tensor, token_index: torch.Tensor, bank_rows: torch.Tensor,
                    vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos(h_t, f_row)`` for the flat token indices given, in fp32 blocks; and a bool flag of
    rows that are NaN/Inf or zero (no direction)."""
    d = hidden_flat.shape[1]
    block = max(1, _BLOCK_BYTES // (8 * d))
    cos = torch.empty(token_index.numel(), dtype=torch.float32, device=hidden_flat.device)
    bad = torch.zeros(token_index.numel(), dtype=torch.bool, device=hidden_flat.device)
    for start in range(0, token_index.numel(), block):
        sl = slice(start, start + block)
        h = hidden_flat.index_select(0, token_index[sl]).float()
        f = vectors.index_select(0, bank_rows[sl])
        # Row-wise dot products as batched [1, d] @ [d, 1] products: one pass, BLAS-backed.
        ss = torch.bmm(h.unsqueeze(1), h.unsqueeze(2)).view(-1)
        dot = torch.bmm(h.unsqueeze(1), f.unsqueeze(2)).view(-1)
        bad[sl] = ~(torch.isfinite(ss) & torch.isfinite(dot) & (ss > 0))
        cos[sl] = dot / ss.sqrt()
    return cos, bad


def token_scores_blockwise(hidden, rows, fallback_score, vectors):
    """Per token: ``score [B, N]`` fp32 (NaN where not scored), ``matched``, ``scored`` and the
    number of bad (NaN/Inf/zero) matched hidden rows."""
    b, n, d = hidden.shape
    flat_rows = rows.reshape(-1)
    matched_idx = (flat_rows >= 0).nonzero().squeeze(1)
    cos, bad = matched_cosines(hidden.reshape(b * n, d), matched_idx,
                               flat_rows.index_select(0, matched_idx), vectors)
    is_fallback = flat_rows == -1
    score = torch.where(is_fallback, fallback_score.reshape(-1).float(),
                        torch.full((b * n,), float("nan"), device=hidden.device))
    score.index_copy_(0, matched_idx, cos)
    bad_flat = torch.zeros(b * n, dtype=torch.bool, device=hidden.device)
    bad_flat.index_copy_(0, matched_idx, bad)
    matched = (flat_rows >= 0) & ~bad_flat
    scored = (is_fallback | matched)
    score = torch.where(scored, score, torch.full_like(score, float("nan")))
    return (score.view(b, n), matched.view(b, n), scored.view(b, n), int(bad.sum()))


def pool_blockwise(hidden, rows, fallback_score, weights, vectors):
    """The fused kernel's contract in vectorised torch: ``(sum_ws, sum_w, max, n_scored,
    n_matched, n_bad)`` per example."""
    b = hidden.shape[0]
    score, matched, scored, n_bad = token_scores_blockwise(hidden, rows, fallback_score, vectors)
    w = torch.where(scored, weights.float(), torch.zeros_like(weights, dtype=torch.float32))
    s = torch.where(scored, score, torch.zeros_like(score))
    sum_ws = (w.double() * s.double()).sum(1)
    sum_w = w.double().sum(1)
    mx = torch.where(scored, score, torch.full_like(score, float("-inf"))).amax(1) if score.shape[1] \
        else torch.full((b,), float("-inf"), device=hidden.device)
    return sum_ws, sum_w, mx, scored.sum(1), matched.sum(1), n_bad
