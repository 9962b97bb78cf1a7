"""``match_and_pool``: candidate hidden states to example scores against one bank (SPEC 3).

One call scores a padded batch ``hidden [B, N, d]`` with its ``token_ids [B, N]`` and ``counted
[B, N]`` mask against a bank given as plain tensors: unit ``vectors [C, d]`` and ``row_table
[V]`` (token id -> row of ``vectors``, -1 for ids without a fingerprint). Each counted token with
a fingerprint takes ``cos(h, f_{x})`` (a gather), the others the fallback (``nearest``:
``(1 - lambda) * max_t cos(h, f_t)`` through :mod:`trim_fast.ops.nearest`; ``zero``; ``skip``),
weighted by ``idf[x]``, and pools per example to
``S = w_mean * mean_w(s) + w_max * max(s) + w_coverage * coverage``.

Backends: ``triton`` (CUDA; or the interpreter), ``cpu`` (the C++ extension) and ``torch``
(blockwise, any device); ``auto``: triton on CUDA, cpu (else torch) on the CPU. The naive twins
in :mod:`trim_fast.ops.token_match.naive` are the tests' oracle, not a backend. Hidden states of
any float dtype are read as they are; the math is fp32. Only tokens that are scored are read: a
NaN/Inf (or zero) hidden state among them is an error; padding and uncounted positions are never
read.
"""
from __future__ import annotations

import importlib

import torch

from trim_fast.ops.backends import BACKENDS, resolve_backend
from trim_fast.types import FALLBACKS, PooledScores, TokenScores

_POOLS = {
    "triton": ("trim_fast.ops.token_match.triton", "pool_triton"),
    "cpu": ("trim_fast.ops.token_match.cpu", "pool_cpu"),
    "torch": ("trim_fast.ops.token_match.blockwise", "pool_blockwise"),
}
# Row codes of the kernel contract: >= 0 bank row (matched), -1 fallback score, -2 not scored.
FALLBACK_ROW, SKIP_ROW = -1, -2


def _check_inputs(hidden, token_ids, counted, vectors, row_table):
    if not all(isinstance(t, torch.Tensor) for t in (hidden, token_ids, counted, vectors, row_table)):
        raise TypeError("hidden, token_ids, counted, vectors and row_table must be torch tensors")
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be [B, N, d], got {tuple(hidden.shape)}")
    if not hidden.is_floating_point():
        raise TypeError(f"hidden states must be floating point, got {hidden.dtype}")
    if tuple(token_ids.shape) != tuple(hidden.shape[:2]) or tuple(counted.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"token_ids and counted must be [B, N] = {tuple(hidden.shape[:2])}; got "
                         f"{tuple(token_ids.shape)} and {tuple(counted.shape)}")
    if token_ids.is_floating_point() or token_ids.dtype == torch.bool:
        raise TypeError(f"token_ids must be an integer tensor, got {token_ids.dtype}")
    if counted.dtype != torch.bool:
        raise TypeError(f"counted must be a bool mask, got {counted.dtype}")
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"vectors must be a non-empty [C, d] matrix, got {tuple(vectors.shape)}")
    if row_table.ndim != 1 or row_table.is_floating_point():
        raise ValueError(f"row_table must be an integer [V] vector, got {row_table.dtype} "
                         f"{tuple(row_table.shape)}")
    if hidden.shape[2] != vectors.shape[1]:
        raise ValueError(f"hidden size {hidden.shape[2]} differs from the bank's d={vectors.shape[1]}; "
                         f"was the bank built with another model?")
    if len({hidden.device, token_ids.device, counted.device}) != 1:
        raise ValueError("hidden, token_ids and counted must be on one device")


def _check_options(fallback, fallback_penalty):
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if not 0.0 <= fallback_penalty <= 1.0:
        raise ValueError(f"fallback_penalty (lambda) must be in [0, 1], got {fallback_penalty}")


def _on_device(vectors, row_table, device):
    return vectors.to(device=device, dtype=torch.float32), row_table.to(device=device, dtype=torch.long)


def prepare_tokens(hidden, token_ids, counted, vectors, row_table, *, idf, fallback,
                   fallback_penalty, nearest=None):
    """The kernel inputs: ``rows [B, N]`` (bank row / -1 fallback / -2 not scored), the
    fallback scores ``[B, N]`` fp32 and the token weights ``[B, N]`` fp32."""
    b, n, d = hidden.shape
    ids = token_ids.long()
    # Gathers use index_select: advanced indexing is far slower on CPU for these sizes.
    counted_ids = torch.where(counted, ids, torch.zeros_like(ids))
    if counted.any() and int(counted_ids.min()) < 0:
        raise ValueError("token_ids: a counted token has a negative id")
    in_table = (ids >= 0) & (ids < row_table.numel())
    looked_up = row_table.index_select(0, ids.clamp(0, max(row_table.numel() - 1, 0)).view(-1)).view(b, n)
    rows = torch.where(in_table, looked_up, torch.full_like(ids, FALLBACK_ROW))
    rows = torch.where(counted, rows, torch.full_like(rows, SKIP_ROW))
    if fallback == "skip":
        rows = torch.where(rows == FALLBACK_ROW, torch.full_like(rows, SKIP_ROW), rows)
    fallback_score = torch.zeros(b, n, dtype=torch.float32, device=hidden.device)
    if fallback == "nearest":
        flat = (rows.reshape(-1) == FALLBACK_ROW).nonzero().squeeze(1)
        if flat.numel():
            q = hidden.reshape(b * n, d).index_select(0, flat).float()
            norm = q.norm(dim=-1, keepdim=True)
            bad = ~(torch.isfinite(norm) & (norm > 0)).squeeze(1)
            if bool(bad.any()):
                raise ValueError(f"hidden states: {int(bad.sum())} scored token(s) have NaN/Inf "
                                 f"or all-zero hidden states")
            if nearest is None:
                from trim_fast.ops.nearest import NearestIndex

                nearest = NearestIndex(vectors)
            best, _ = nearest.search(q / norm)
            fallback_score.view(-1).index_copy_(0, flat, (1.0 - fallback_penalty) * best.float())
    if idf is None:
        weights = torch.ones(b, n, dtype=torch.float32, device=hidden.device)
    else:
        idf = idf.to(hidden.device)
        if idf.ndim != 1:
            raise ValueError(f"idf must be a [vocab] vector, got {tuple(idf.shape)}")
        if counted.any() and int(counted_ids.max()) >= idf.numel():
            raise ValueError(f"token id {int(counted_ids.max())} is outside the idf table of "
                             f"{idf.numel()} entries; idf and tokenizer disagree")
        weights = idf.float().index_select(0, ids.clamp(0, idf.numel() - 1).view(-1)).view(b, n)
        weights = torch.where(counted, weights, torch.zeros_like(weights))
    return rows, fallback_score, weights


def finish_pooling(sum_ws, sum_w, mx, n_scored, n_matched, *, w_mean, w_max, w_coverage):
    """Sums and counts to :class:`PooledScores` (fp32), SPEC 3's formula."""
    sum_ws, sum_w = sum_ws.double(), sum_w.double()
    none = n_scored == 0
    nan = torch.full_like(sum_ws, float("nan"))
    mean = torch.where(none, nan, sum_ws / torch.where(none, torch.ones_like(sum_w), sum_w))
    mxd = torch.where(none, nan, mx.double())
    cov = torch.where(none, nan, n_matched.double() / n_scored.clamp_min(1).double())
    score = w_mean * mean + w_max * mxd + w_coverage * cov
    score = torch.where(none, torch.full_like(score, float("-inf")), score)
    return PooledScores(score.float(), mean.float(), mxd.float(), cov.float(),
                        n_scored.long(), n_matched.long())


def match_and_pool(
    hidden: torch.Tensor,
    token_ids: torch.Tensor,
    counted: torch.Tensor,
    vectors: torch.Tensor,
    row_table: torch.Tensor,
    *,
    idf: torch.Tensor | None = None,
    fallback: str = "nearest",
    fallback_penalty: float = 0.9,
    w_mean: float = 0.5,
    w_max: float = 0.5,
    w_coverage: float = 0.05,
    backend: str = "auto",
    nearest=None,
) -> PooledScores:
    """Score a batch of candidates against one bank. See the module docstring.

    hidden ``[B, N, d]`` (any float dtype); token_ids ``[B, N]``; counted ``[B, N]`` bool;
    vectors ``[C, d]`` unit rows; row_table ``[V]`` long; idf ``[V]`` or ``None`` (weights 1).
    ``nearest``: a prebuilt :class:`trim_fast.ops.nearest.NearestIndex` over ``vectors`` (built
    per call when ``None``), for the ``nearest`` fallback.
    """
    _check_options(fallback, fallback_penalty)
    _check_inputs(hidden, token_ids, counted, vectors, row_table)
    name = resolve_backend(backend, hidden.device)
    vectors, row_table = _on_device(vectors, row_table, hidden.device)
    if nearest is not None and getattr(nearest, "num_classes", None) != vectors.shape[0]:
        raise ValueError("nearest: the given index was not built over these vectors (class counts "
                         "differ)")
    rows, fb, weights = prepare_tokens(hidden, token_ids, counted, vectors, row_table, idf=idf,
                                       fallback=fallback, fallback_penalty=fallback_penalty,
                                       nearest=nearest)
    mod, fn = _POOLS[name]
    pool = getattr(importlib.import_module(mod), fn)
    sum_ws, sum_w, mx, n_scored, n_matched, n_bad = pool(hidden, rows, fb, weights, vectors)
    if n_bad:
        raise ValueError(f"hidden states: {n_bad} scored token(s) have NaN/Inf or all-zero "
                         f"hidden states")
    return finish_pooling(sum_ws, sum_w, mx, n_scored, n_matched, w_mean=w_mean, w_max=w_max,
                          w_coverage=w_coverage)


def token_scores(hidden, token_ids, counted, vectors, row_table, *, fallback="nearest",
                 fallback_penalty=0.9, nearest=None) -> TokenScores:
    """Per-token scores ``[B, N]`` fp32 (NaN where not scored) with ``matched`` and ``scored``
    masks, as :func:`trim_fast.reference.token_scores` (blockwise torch, any device)."""
    from trim_fast.ops.token_match.blockwise import token_scores_blockwise

    _check_options(fallback, fallback_penalty)
    _check_inputs(hidden, token_ids, counted, vectors, row_table)
    vectors, row_table = _on_device(vectors, row_table, hidden.device)
    rows, fb, _ = prepare_tokens(hidden, token_ids, counted, vectors, row_table, idf=None,
                                 fallback=fallback, fallback_penalty=fallback_penalty, nearest=nearest)
    score, matched, scored, n_bad = token_scores_blockwise(hidden, rows, fb, vectors)
    if n_bad:
        raise ValueError(f"hidden states: {n_bad} scored token(s) have NaN/Inf or all-zero "
                         f"hidden states")
    return TokenScores(score=score, matched=matched, scored=scored)


__all__ = ["match_and_pool", "token_scores", "PooledScores", "BACKENDS", "prepare_tokens",
           "finish_pooling"]
