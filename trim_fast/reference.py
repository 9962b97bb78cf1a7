"""The naive reference of the TRIM method (docs/SPEC.md sections 1-4): the oracle every fast path
is tested against. Written to be read next to the SPEC, formula by formula; not fast. It imports
only torch, :mod:`trim_fast.types` and :mod:`trim_fast.validation`: nothing of the fast paths.

Section 1 materialises the full attention matrix on purpose (that is what "reference" means
here); every fast path computes the same numbers without it.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from trim_fast.types import FALLBACKS, Fingerprints, SaliencyStats, TokenSaliency, TokenScores
from trim_fast.validation import (
    check_finite,
    check_qk,
    check_seq_lens,
)

# --------------------------------------------------------------------------------------------
# Section 1: token saliency
# --------------------------------------------------------------------------------------------


def visibility_mask(
    n: int,
    *,
    causal: bool = True,
    seq_lens: torch.Tensor | None = None,
    window: int | None = None,
    batch: int = 1,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``[B, N, N]`` bool: may query ``i`` see key ``j``? Padding (right, via ``seq_lens``)
    sees nothing and is seen by nothing. ``window`` is a sliding window: ``i - j < window``."""
    if window is not None and window < 1:
        raise ValueError(f"window must be a positive int or None, got {window!r}")
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    allowed = torch.ones(n, n, dtype=torch.bool, device=device)
    if causal:
        allowed &= j <= i
    if window is not None:
        allowed &= (i - j) < window
        if not causal:
            allowed &= (j - i) < window
    allowed = allowed.expand(batch, n, n).clone()
    if seq_lens is not None:
        valid = torch.arange(n, device=device)[None, :] < seq_lens.to(device)[:, None]  # [B, N]
        allowed &= valid[:, :, None] & valid[:, None, :]
    return allowed


def attention_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    visible: torch.Tensor,
    *,
    scale: float | None = None,
    softcap: float | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """``scale * q k^T`` (soft-capped if asked) with ``-inf`` where not visible, ``[B, H, N, N]``.
    GQA: query head ``h`` reads KV head ``h // (H / H_kv)``. ``upcast`` computes in float64 (the
    oracle); ``upcast=False`` stays in the input dtype, to measure that dtype's own error."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    if upcast:
        q, k = q.double(), k.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    return s.masked_fill(~visible[:, None], float("-inf"))


def attention_probs(scores: torch.Tensor) -> torch.Tensor:
    """``softmax`` of masked scores; rows with no visible key (padding) are all zero."""
    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)




def saliency_stats_from_probs(
    probs: torch.Tensor, visible: torch.Tensor, lse: torch.Tensor | None = None
) -> SaliencyStats:
    """The raw statistics from a materialised ``[B, H, N, N]`` attention and its visibility."""
    a = probs.double()
    vis = visible[:, None].expand_as(a)
    plogp = torch.where(vis & (a > 0), a * torch.log(a.clamp_min(1e-300)), torch.zeros_like(a))
    n_i = visible.sum(-1).double()  # [B, N]
    m_j = visible.sum(-2).double()  # [B, N]
    row_entropy = (-plogp.sum(-1)).sum(1)
    col_mass = a.sum(-2).sum(1)
    col_mass_weighted = (a * n_i[:, None, :, None]).sum(-2).sum(1)
    if lse is None:
        lse = torch.full(a.shape[:3], float("nan"), dtype=torch.float32, device=a.device)
    return SaliencyStats(
        row_entropy=row_entropy.float(),
        col_mass=col_mass.float(),
        col_mass_weighted=col_mass_weighted.float(),
        lse=lse.float(),
        row_visible=n_i.float(),
        col_seen=m_j.float(),
        num_heads=probs.shape[1],
    )


def attention_saliency(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    seq_lens: torch.Tensor | None = None,
    window: int | None = None,
    softcap: float | None = None,
    upcast: bool = True,
) -> SaliencyStats:
    """Reference twin of :func:`trim_fast.ops.attention_saliency`, by materialising ``A``."""
    check_qk(q, k)
    check_finite(q, "q")
    check_finite(k, "k")
    b, _, n, _ = q.shape
    seq_lens = check_seq_lens(seq_lens, b, n, q.device)
    visible = visibility_mask(n, causal=causal, seq_lens=seq_lens, window=window, batch=b,
                              device=q.device)
    scores = attention_scores(q, k, visible, scale=scale, softcap=softcap, upcast=upcast)
    lse = torch.logsumexp(scores.double(), dim=-1)
    probs = attention_probs(scores)
    return saliency_stats_from_probs(probs, visible, lse)




def token_saliency_from_probs(
    layer_probs: Sequence[torch.Tensor],
    visible: torch.Tensor,
    *,
    w_row: float = 0.5,
    w_col: float = 0.5,
) -> TokenSaliency:
    """SPEC section 1 literally: means over every (layer, head) of the per-head quantities.

    ``layer_probs``: the last ``L`` layers' ``[B, H, N, N]`` attention (as ``output_attentions``
    returns it); ``visible``: ``[B, N, N]``. Padding positions get 0.
    """
    if len(layer_probs) == 0:
        raise ValueError("token_saliency_from_probs: no attention layers given")
    vis = visible
    n_i = vis.sum(-1).double()  # [B, N]
    m_j = vis.sum(-2).double()
    per_head_q, per_head_r = [], []
    for a in layer_probs:
        a = a.double() * vis[:, None]
        plogp = torch.where(a > 0, a * torch.log(a.clamp_min(1e-300)), torch.zeros_like(a))
        h_i = -plogp.sum(-1)  # [B, H, N]
        log_n = torch.log(n_i)[:, None].expand_as(h_i)
        q_i = torch.where(log_n > 0, 1.0 - h_i / log_n.clamp_min(1e-300), torch.ones_like(h_i))
        share = (a * n_i[:, None, :, None]).sum(-2) / m_j[:, None].clamp_min(1)  # [B, H, N]
        per_head_q.append(q_i)
        per_head_r.append(share)
    q_tok = torch.cat(per_head_q, 1).mean(1)
    r_tok = torch.cat(per_head_r, 1).mean(1)
    k_tok = r_tok / (1.0 + r_tok)
    valid = n_i > 0
    q_tok = torch.where(valid, q_tok, torch.zeros_like(q_tok))
    k_tok = torch.where(valid, k_tok, torch.zeros_like(k_tok))
    alpha = w_row * q_tok + w_col * k_tok
    return TokenSaliency(alpha=alpha.float(), row=q_tok.float(), col=k_tok.float())


# --------------------------------------------------------------------------------------------
# Section 2: fingerprints
# --------------------------------------------------------------------------------------------




def build_fingerprints(
    hidden: torch.Tensor, token_ids: torch.Tensor, alpha: torch.Tensor, *, min_norm: float = 1e-6
) -> Fingerprints:
    """SPEC 2 over the counted target tokens, flattened: ``hidden [M, d]``, ``token_ids [M]``,
    ``alpha [M]``. Classes whose weighted sum has norm < ``min_norm`` are dropped."""
    if hidden.ndim != 2 or token_ids.shape != hidden.shape[:1] or alpha.shape != hidden.shape[:1]:
        raise ValueError(
            f"build_fingerprints: expected hidden [M, d], token_ids [M], alpha [M]; got "
            f"{tuple(hidden.shape)}, {tuple(token_ids.shape)}, {tuple(alpha.shape)}")
    if hidden.shape[0] == 0:
        raise ValueError("build_fingerprints: the target set has no counted tokens")
    check_finite(hidden, "hidden states")
    check_finite(alpha, "alpha")
    h_hat = _unit_rows(hidden)
    classes, vectors, counts, mass = [], [], [], []
    for t in sorted(set(token_ids.tolist())):
        sel = token_ids == t
        weighted = (alpha[sel].double()[:, None] * h_hat[sel]).sum(0)
        norm = weighted.norm()
        if norm < min_norm:
            continue
        classes.append(t)
        vectors.append(weighted / norm)
        counts.append(int(sel.sum()))
        mass.append(float(alpha[sel].double().sum()))
    if not classes:
        raise ValueError("build_fingerprints: every class has a zero weighted sum; no fingerprint")
    return Fingerprints(
        classes=torch.tensor(classes, dtype=torch.long),
        vectors=torch.stack(vectors).float(),
        counts=torch.tensor(counts, dtype=torch.long),
        mass=torch.tensor(mass, dtype=torch.float32),
    )


def _unit_rows(hidden: torch.Tensor) -> torch.Tensor:
    """``h / ||h||`` in float64; a zero row has no direction (it would become NaN)."""
    norms = hidden.double().norm(dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError(f"hidden states contain {int((norms == 0).sum())} zero vector(s); "
                         "cosine is undefined")
    return hidden.double() / norms


# --------------------------------------------------------------------------------------------
# Section 3: scoring a candidate
# --------------------------------------------------------------------------------------------



def token_scores(
    hidden: torch.Tensor,
    token_ids: torch.Tensor,
    bank: Fingerprints,
    *,
    fallback: str = "nearest",
    fallback_penalty: float = 0.9,
) -> TokenScores:
    """SPEC 3, token by token: matched tokens take ``cos(h_j, f_{x_j})``; the others
    ``(1 - lambda) * max_t cos(h_j, f_t)`` (``nearest``), ``0`` (``zero``) or nothing (``skip``)."""
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if not 0.0 <= fallback_penalty <= 1.0:
        raise ValueError(f"fallback_penalty (lambda) must be in [0, 1], got {fallback_penalty}")
    if hidden.ndim != 2 or token_ids.shape != hidden.shape[:1]:
        raise ValueError(f"token_scores: expected hidden [M, d] and token_ids [M]; got "
                         f"{tuple(hidden.shape)}, {tuple(token_ids.shape)}")
    if hidden.shape[1] != bank.vectors.shape[1]:
        raise ValueError(f"token_scores: hidden size {hidden.shape[1]} differs from the "
                         f"fingerprints' {bank.vectors.shape[1]}")
    check_finite(hidden, "hidden states")
    h_hat = _unit_rows(hidden)
    f = bank.vectors.double()
    row_of = {int(t): r for r, t in enumerate(bank.classes.tolist())}
    m = hidden.shape[0]
    score = torch.full((m,), float("nan"), dtype=torch.float64)
    matched = torch.zeros(m, dtype=torch.bool)
    scored = torch.zeros(m, dtype=torch.bool)
    for j, t in enumerate(token_ids.tolist()):
        if t in row_of:
            score[j] = torch.dot(h_hat[j], f[row_of[t]])
            matched[j] = scored[j] = True
        elif fallback == "nearest":
            score[j] = (1.0 - fallback_penalty) * (f @ h_hat[j]).max()
            scored[j] = True
        elif fallback == "zero":
            score[j] = 0.0
            scored[j] = True
    return TokenScores(score=score.float(), matched=matched, scored=scored)


def document_frequency(examples: Iterable[torch.Tensor | Sequence[int]]) -> tuple[Counter, int]:
    """``df(t)``: how many examples contain ``t`` among their counted tokens; and ``N``."""
    df: Counter = Counter()
    n = 0
    for ids in examples:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        df.update(set(int(t) for t in ids))
        n += 1
    return df, n


def idf(token_ids: torch.Tensor, df: Counter, num_examples: int) -> torch.Tensor:
    """``idf(t) = ln((1 + N) / (1 + df(t))) + 1`` for each token."""
    return torch.tensor(
        [math.log((1 + num_examples) / (1 + df.get(int(t), 0))) + 1.0 for t in token_ids.tolist()],
        dtype=torch.float32,
    )


@dataclass
class ExampleScore:
    score: float
    mean: float  # weighted mean of s_j
    max: float
    coverage: float
    n_scored: int
    n_matched: int


def example_score(
    scores: TokenScores,
    weights: torch.Tensor | None = None,
    *,
    w_mean: float = 0.5,
    w_max: float = 0.5,
    w_coverage: float = 0.05,
) -> ExampleScore:
    """``S = w_mean * mean_w(s) + w_max * max(s) + w_coverage * c``; ``-inf`` with no scored token."""
    sel = scores.scored
    n_scored, n_matched = int(sel.sum()), int((scores.matched & sel).sum())
    if n_scored == 0:
        return ExampleScore(float("-inf"), float("nan"), float("nan"), float("nan"), 0, 0)
    s = scores.score[sel].double()
    w = torch.ones_like(s) if weights is None else weights[sel].double()
    mean = float((w * s).sum() / w.sum())
    mx = float(s.max())
    cov = n_matched / n_scored
    total = w_mean * mean + w_max * mx + w_coverage * cov
    return ExampleScore(total, mean, mx, cov, n_scored, n_matched)


# --------------------------------------------------------------------------------------------
# Section 4: selection
# --------------------------------------------------------------------------------------------


def combine_tasks(task_scores: torch.Tensor, how: str = "quantile") -> torch.Tensor:
    """``[T, P]`` task-bank scores to ``[P]``: ``quantile`` (default: per task, the share of the
    task's finite scores at most the example's; then the max over tasks), ``max`` or ``mean``."""
    if task_scores.ndim != 2 or task_scores.shape[0] == 0:
        raise ValueError(f"combine_tasks: expected [tasks, pool] scores, got {tuple(task_scores.shape)}")
    if how == "quantile" and task_scores.shape[0] == 1:
        return task_scores[0]
    if how == "quantile":
        rows = []
        for row in task_scores.double().tolist():
            finite = [s for s in row if math.isfinite(s)]
            rows.append([sum(f <= s for f in finite) / len(finite) if math.isfinite(s) else s
                         for s in row])
        return torch.tensor(rows, dtype=torch.float64).max(0).values
    if how == "max":
        return task_scores.max(0).values
    if how == "mean":
        return task_scores.mean(0)
    raise ValueError(f"combine_tasks: how must be 'quantile', 'max' or 'mean', got {how!r}")


def select_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` best scores in order of score; ties go to the lower index; ``-inf``
    (no scored token) and NaN are never selected, so fewer than ``k`` may come back."""
    if scores.ndim != 1:
        raise ValueError(f"select_top_k: expected [pool] scores, got {tuple(scores.shape)}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    order = sorted(
        (i for i, s in enumerate(scores.tolist()) if s == s and s != float("-inf")),
        key=lambda i: (-scores[i].item(), i),
    )
    return torch.tensor(order[:k], dtype=torch.long)
