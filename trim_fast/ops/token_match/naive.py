"""Naive twins of ``match_and_pool``, the tests' oracle (not a backend).

``match_and_pool_reference``: straight from :mod:`trim_fast.reference` (token by token in
float64, one example at a time). ``pool_naive``: the kernel contract in plain Python,
token by token (``rows``: >= 0 matched bank row, -1 fallback score, <= -2 not scored).
"""
from __future__ import annotations

import math

import torch

from trim_fast import reference
from trim_fast.types import TokenScores


def match_and_pool_reference(hidden, token_ids, counted, fingerprints, *,
                             idf, fallback, fallback_penalty, w_mean, w_max, w_coverage):
    """Per example: ``reference.token_scores`` on its counted tokens, then ``example_score``.
    Returns lists (score, mean, max, coverage, n_scored, n_matched) and the token scores."""
    b = hidden.shape[0]
    out = {k: [] for k in ("score", "mean", "max", "coverage", "n_scored", "n_matched")}
    token_score = torch.full(token_ids.shape, float("nan"), dtype=torch.float32)
    token_matched = torch.zeros(token_ids.shape, dtype=torch.bool)
    for i in range(b):
        sel = counted[i].cpu()
        ids = token_ids[i].cpu()[sel]
        if ids.numel() == 0:
            ts = TokenScores(torch.empty(0), torch.empty(0, dtype=torch.bool),
                                       torch.empty(0, dtype=torch.bool))
        else:
            ts = reference.token_scores(hidden[i].cpu()[sel], ids, fingerprints, fallback=fallback,
                                        fallback_penalty=fallback_penalty)
        weights = None if idf is None else idf.cpu()[ids]
        es = reference.example_score(ts, weights, w_mean=w_mean, w_max=w_max, w_coverage=w_coverage)
        for k in out:
            out[k].append(getattr(es, k))
        token_score[i, sel] = ts.score
        token_matched[i, sel] = ts.matched
    return out, token_score, token_matched


def pool_naive(hidden, rows, fallback_score, weights, vectors):
    """The fused kernel's contract, token by token. Returns
    ``(sum_ws, sum_w, max, n_scored, n_matched, n_bad)`` per example."""
    b, n, _ = hidden.shape
    h = hidden.double().cpu()
    f = vectors.double().cpu()
    rows_l, fb_l, w_l = rows.cpu().tolist(), fallback_score.cpu().tolist(), weights.cpu().tolist()
    sum_ws, sum_w = torch.zeros(b, dtype=torch.float64), torch.zeros(b, dtype=torch.float64)
    mx = torch.full((b,), float("-inf"), dtype=torch.float32)
    n_scored, n_matched = torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long)
    n_bad = 0
    for i in range(b):
        for j in range(n):
            row = rows_l[i][j]
            if row <= -2:
                continue
            if row >= 0:
                norm = float(h[i, j].norm())
                if not math.isfinite(norm) or norm == 0.0:
                    n_bad += 1
                    continue
                s = float(h[i, j] @ f[row]) / norm
                n_matched[i] += 1
            else:
                s = fb_l[i][j]
            n_scored[i] += 1
            sum_ws[i] += w_l[i][j] * s
            sum_w[i] += w_l[i][j]
            mx[i] = max(float(mx[i]), s)
    return sum_ws, sum_w, mx, n_scored, n_matched, n_bad
