"""The study's proposed default scorer ("matched", issue 14), written as a production scorer
would run it: one bank per task from the targets, one mean state ``mu`` from a seeded sample of
the pool, then every pool batch scored from its own forward.

For task bank ``B`` (token classes ``t`` seen in the targets' counted tokens):

    u(h)   = (h - mu) / |h - mu|                       centred unit state (layer: see LAYER)
    f_t    = normalize( sum_{target occurrences of t} alpha * u(h) )          (SPEC 2, centred)
    M(x)   = counted tokens j of example x whose id x_j has a fingerprint     (no fallback)
    s_j    = u(h_j) . f_{x_j}                                                 for j in M(x)
    S(x)   = 0.5 * mean_{j in M(x)} s_j + 0.5 * max_{j in M(x)} s_j           (-inf if M(x) empty)

No IDF, no nearest-fingerprint search, no coverage term (it would be 1 for every example).
``mu = None`` gives the uncentred variant (then no pool statistic at all).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MatchedBank:
    classes: torch.Tensor  # [C] sorted token ids
    vectors: torch.Tensor  # [C, d] unit fingerprints of centred states
    row_of: torch.Tensor  # [V] row of each token id, -1 without a fingerprint


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def mean_state(hidden: torch.Tensor, counted: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of the counted states of a padded batch ``[B, N, d]`` (fp64) and their number; add
    these up over the sample's batches and divide for ``mu``."""
    h = hidden[counted].double()
    return h.sum(0), h.shape[0]


def build_bank(hidden: torch.Tensor, token_ids: torch.Tensor, alpha: torch.Tensor, mu: torch.Tensor | None,
               vocab: int, min_norm: float = 1e-6) -> MatchedBank:
    """From the targets' counted tokens, flattened: ``hidden [M, d]``, ``token_ids [M]``, ``alpha [M]``."""
    h = hidden.double() - (0 if mu is None else mu.double())
    u = _unit(h)
    classes, inv = torch.unique(token_ids, return_inverse=True)
    acc = torch.zeros(classes.numel(), h.shape[1], dtype=torch.float64).index_add_(0, inv, alpha.double()[:, None] * u)
    keep = acc.norm(dim=1) >= min_norm
    classes, acc = classes[keep], acc[keep]
    row_of = torch.full((vocab,), -1, dtype=torch.long)
    row_of[classes] = torch.arange(classes.numel())
    return MatchedBank(classes, _unit(acc).float(), row_of)


def score_batch(hidden: torch.Tensor, token_ids: torch.Tensor, counted: torch.Tensor, bank: MatchedBank,
                mu: torch.Tensor | None, w_mean: float = 0.5, w_max: float = 0.5) -> torch.Tensor:
    """``S`` of each row of a padded batch: ``hidden [B, N, d]``, ``token_ids [B, N]``, ``counted [B, N]``."""
    b = hidden.shape[0]
    ids = token_ids.clamp(0, bank.row_of.numel() - 1)
    rows = torch.where(token_ids < bank.row_of.numel(), bank.row_of.to(ids.device)[ids], -1)
    matched = counted & (rows >= 0)
    bi, pos = matched.nonzero(as_tuple=True)
    h = hidden[bi, pos].float()
    if mu is not None:
        h = h - mu.to(h)
    s = (_unit(h) * bank.vectors.to(h.device)[rows[bi, pos]]).sum(-1)
    n = torch.zeros(b, device=h.device).index_add_(0, bi, torch.ones_like(s))
    mean = torch.zeros(b, device=h.device).index_add_(0, bi, s) / n.clamp_min(1)
    mx = torch.full((b,), float("-inf"), device=h.device).scatter_reduce_(0, bi, s, "amax")
    out = w_mean * mean + w_max * mx
    return torch.where(n > 0, out, torch.full_like(out, float("-inf")))
