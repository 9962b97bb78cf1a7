"""``match_and_pool``: candidate hidden states to example scores against one bank (SPEC 3).

One call scores a padded batch ``hidden [B, N, d]`` with its ``token_ids [B, N]`` and ``counted
[B, N]`` mask: each counted token with a fingerprint takes ``cos(h, f_{x})`` (a gather through
the bank's token -> row table), the others the fallback (``nearest``: ``(1 - lambda) * max_t
cos(h, f_t)`` from :mod:`trim_fast.index`; ``zero``; ``skip``), weighted by ``idf[x]``, and
pools per example to ``S = w_mean * mean_w(s) + w_max * max(s) + w_coverage * coverage``.

Backends: ``triton`` (CUDA; or the interpreter), ``cpu`` (the C++ extension), ``torch``
(blockwise, any device) and ``reference`` (the oracle, token by token in float64).
``auto``: triton on CUDA, cpu (else torch) on the CPU. Hidden states of any float dtype are
read as they are; the math is fp32. Only tokens that are scored are read: a NaN/Inf (or zero)
hidden state among them is an error; padding and uncounted positions are never read.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from trim_fast.ops.backends import BACKENDS, resolve_backend
from trim_fast.fingerprints import FingerprintBank
from trim_fast.reference import FALLBACKS, Fingerprints

_POOLS = {
    "triton": ("trim_fast.ops.token_match.triton", "pool_triton"),
    "cpu": ("trim_fast.ops.token_match.cpu", "pool_cpu"),
    "torch": ("trim_fast.ops.token_match.blockwise", "pool_blockwise"),
}
# Row codes of the kernel contract: >= 0 bank row (matched), -1 fallback score, -2 not scored.
FALLBACK_ROW, SKIP_ROW = -1, -2


@dataclass
class PooledScores:
    """Per example (``[B]``): ``score`` (``-inf`` with no scored token), its ``mean`` / ``max`` /
    ``coverage`` parts (NaN with no scored token), and ``n_scored`` / ``n_matched`` counts."""

    score: torch.Tensor
    mean: torch.Tensor
    max: torch.Tensor
    coverage: torch.Tensor
    n_scored: torch.Tensor
    n_matched: torch.Tensor


@dataclass
class BankTables:
    """What scoring needs from a bank, on one device: unit ``vectors [C, d]`` fp32 and the
    ``row_table [V]`` (token id -> row, -1 unseen). ``index``: optional prebuilt
    :class:`trim_fast.index.NearestFingerprintIndex` for the ``nearest`` fallback."""

    vectors: torch.Tensor
    row_table: torch.Tensor
    index: object | None = None


def bank_tables(bank, device: torch.device, *, index_backend: str = "auto") -> BankTables:
    """The bank's vectors and row table on ``device``, cached on the bank object."""
    if isinstance(bank, BankTables):
        if (bank.vectors.device == device and bank.vectors.dtype == torch.float32
                and bank.row_table.device == device and bank.row_table.dtype == torch.long):
            return bank  # as given, so an index built for it is kept for the next call
        return BankTables(bank.vectors.to(device).float(), bank.row_table.to(device).long(),
                          bank.index)
    if isinstance(bank, tuple) and len(bank) == 2:
        return BankTables(bank[0].to(device).float(), bank[1].to(device).long())
    if isinstance(bank, Fingerprints) and not isinstance(bank, FingerprintBank):
        bank = FingerprintBank.from_reference(bank)
    if not isinstance(bank, FingerprintBank):
        raise TypeError("bank must be a FingerprintBank, reference Fingerprints, or "
                        f"(vectors, row_table); got {type(bank).__name__}")
    cache = bank.__dict__.setdefault("_device_tables", {})
    key = (str(device), index_backend)
    if key not in cache:
        cache[key] = BankTables(bank.vectors.to(device).float().contiguous(),
                                bank.row_of_token().to(device))
    return cache[key]


def _nearest_index(tables: BankTables, index_backend: str):
    if tables.index is None:
        from trim_fast.index import NearestFingerprintIndex

        tables.index = NearestFingerprintIndex(tables.vectors, backend=index_backend)
    return tables.index


def _check_inputs(hidden, token_ids, counted, d_bank):
    if not all(isinstance(t, torch.Tensor) for t in (hidden, token_ids, counted)):
        raise TypeError("hidden, token_ids and counted must be torch tensors")
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
    if hidden.shape[2] != d_bank:
        raise ValueError(f"hidden size {hidden.shape[2]} differs from the bank's d={d_bank}; "
                         f"was the bank built with another model?")
    if len({hidden.device, token_ids.device, counted.device}) != 1:
        raise ValueError("hidden, token_ids and counted must be on one device")


def _check_options(fallback, fallback_penalty):
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if not 0.0 <= fallback_penalty <= 1.0:
        raise ValueError(f"fallback_penalty (lambda) must be in [0, 1], got {fallback_penalty}")


def prepare_tokens(hidden, token_ids, counted, tables: BankTables, *, idf, fallback,
                   fallback_penalty, index_backend="auto"):
    """The kernel inputs: ``rows [B, N]`` (bank row / -1 fallback / -2 not scored), the
    fallback scores ``[B, N]`` fp32 and the token weights ``[B, N]`` fp32."""
    b, n, d = hidden.shape
    ids = token_ids.long()
    # Gathers use index_select: advanced indexing is far slower on CPU for these sizes.
    counted_ids = torch.where(counted, ids, torch.zeros_like(ids))
    if counted.any() and int(counted_ids.min()) < 0:
        raise ValueError("token_ids: a counted token has a negative id")
    table = tables.row_table
    in_table = (ids >= 0) & (ids < table.numel())
    looked_up = table.index_select(0, ids.clamp(0, max(table.numel() - 1, 0)).view(-1)).view(b, n)
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
            best, _ = _nearest_index(tables, index_backend).search(q / norm)
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
    bank,
    *,
    idf: torch.Tensor | None = None,
    fallback: str = "nearest",
    fallback_penalty: float = 0.9,
    w_mean: float = 0.5,
    w_max: float = 0.5,
    w_coverage: float = 0.05,
    backend: str = "auto",
    index_backend: str = "auto",
    index=None,
) -> PooledScores:
    """Score a batch of candidates against one bank. See the module docstring.

    hidden ``[B, N, d]`` (last hidden state, any float dtype); token_ids ``[B, N]``; counted
    ``[B, N]`` bool; bank: :class:`FingerprintBank` (or :class:`BankTables`); idf ``[V]`` or
    ``None`` (weights 1). ``index_backend`` picks the nearest-fingerprint search
    (:mod:`trim_fast.index`); ``index``: a prebuilt ``NearestFingerprintIndex`` over this bank's
    vectors (e.g. ``kind="hnsw"`` for very large banks) to use instead.
    """
    _check_options(fallback, fallback_penalty)
    if backend == "reference":
        return _match_and_pool_reference(hidden, token_ids, counted, bank, idf=idf,
                                         fallback=fallback, fallback_penalty=fallback_penalty,
                                         w_mean=w_mean, w_max=w_max, w_coverage=w_coverage)
    name = resolve_backend(backend, hidden.device)
    tables = bank_tables(bank, hidden.device, index_backend=index_backend)
    if index is not None:
        if getattr(index, "num_classes", None) != tables.vectors.shape[0]:
            raise ValueError("index: the given nearest-fingerprint index was not built over this "
                             "bank's vectors (class counts differ)")
        tables = BankTables(tables.vectors, tables.row_table, index)
    _check_inputs(hidden, token_ids, counted, tables.vectors.shape[1])
    rows, fb, weights = prepare_tokens(hidden, token_ids, counted, tables, idf=idf,
                                       fallback=fallback, fallback_penalty=fallback_penalty,
                                       index_backend=index_backend)
    mod, fn = _POOLS[name]
    pool = getattr(importlib.import_module(mod), fn)
    sum_ws, sum_w, mx, n_scored, n_matched, n_bad = pool(hidden, rows, fb, weights, tables.vectors)
    if n_bad:
        raise ValueError(f"hidden states: {n_bad} scored token(s) have NaN/Inf or all-zero "
                         f"hidden states")
    return finish_pooling(sum_ws, sum_w, mx, n_scored, n_matched, w_mean=w_mean, w_max=w_max,
                          w_coverage=w_coverage)


def _match_and_pool_reference(hidden, token_ids, counted, bank, **kw) -> PooledScores:
    from trim_fast.ops.token_match.naive import match_and_pool_reference

    fp = bank.as_reference() if isinstance(bank, FingerprintBank) else bank
    if not isinstance(fp, Fingerprints):
        raise TypeError("backend='reference' needs a FingerprintBank or reference Fingerprints")
    _check_inputs(hidden, token_ids, counted, fp.vectors.shape[1])
    out, _, _ = match_and_pool_reference(hidden, token_ids, counted, fp, **kw)
    return PooledScores(
        score=torch.tensor(out["score"], dtype=torch.float32),
        mean=torch.tensor(out["mean"], dtype=torch.float32),
        max=torch.tensor(out["max"], dtype=torch.float32),
        coverage=torch.tensor(out["coverage"], dtype=torch.float32),
        n_scored=torch.tensor(out["n_scored"], dtype=torch.long),
        n_matched=torch.tensor(out["n_matched"], dtype=torch.long),
    )


def token_scores(hidden, token_ids, counted, bank, *, fallback="nearest", fallback_penalty=0.9,
                 index_backend="auto"):
    """Per-token scores ``[B, N]`` fp32 (NaN where not scored) with ``matched`` and ``scored``
    masks, as :func:`trim_fast.reference.token_scores` (blockwise torch, any device)."""
    from trim_fast.ops.token_match.blockwise import token_scores_blockwise
    from trim_fast.reference import TokenScores

    _check_options(fallback, fallback_penalty)
    tables = bank_tables(bank, hidden.device, index_backend=index_backend)
    _check_inputs(hidden, token_ids, counted, tables.vectors.shape[1])
    rows, fb, _ = prepare_tokens(hidden, token_ids, counted, tables, idf=None, fallback=fallback,
                                 fallback_penalty=fallback_penalty, index_backend=index_backend)
    score, matched, scored, n_bad = token_scores_blockwise(hidden, rows, fb, tables.vectors)
    if n_bad:
        raise ValueError(f"hidden states: {n_bad} scored token(s) have NaN/Inf or all-zero "
                         f"hidden states")
    return TokenScores(score=score, matched=matched, scored=scored)


__all__ = ["match_and_pool", "token_scores", "PooledScores", "BankTables", "BACKENDS",
           "resolve_backend", "prepare_tokens", "finish_pooling", "bank_tables"]
