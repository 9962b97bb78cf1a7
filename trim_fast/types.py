"""Plain result types shared by the oracle, the kernels and the pipeline. Imports torch only, so
every layer can use them without pulling in another."""
from __future__ import annotations

from dataclasses import dataclass

import torch

FALLBACKS = ("nearest", "zero", "skip")
# whose message content counts (SPEC 0); config, rendering and the plug-ins read it from here
SCOPES = ("all", "response", "prompt")


@dataclass
class SaliencyStats:
    """Per-layer, head-summed statistics of one attention call (SPEC section 1).

    All ``[B, N]`` float32 except ``lse`` (``[B, H, N]``). Padding positions hold 0 (``lse``:
    ``-inf``). ``row_visible`` is ``n_i`` and ``col_seen`` is ``m_j``.
    """

    row_entropy: torch.Tensor  # sum_h H_i
    col_mass: torch.Tensor  # sum_h sum_i A_ij
    col_mass_weighted: torch.Tensor  # sum_h sum_i n_i A_ij
    lse: torch.Tensor  # log-sum-exp of each row of scale * q k^T, per head
    row_visible: torch.Tensor  # n_i
    col_seen: torch.Tensor  # m_j
    num_heads: int


@dataclass
class TokenSaliency:
    """``alpha = w_row * Q + w_col * K`` per token (``[B, N]``), with its two parts."""

    alpha: torch.Tensor
    row: torch.Tensor  # Q_i
    col: torch.Tensor  # K_j


@dataclass
class Fingerprints:
    """One bank as the oracle sees it: ``classes`` (sorted token ids, ``[C]``), unit ``vectors``
    (``[C, d]``), ``counts`` (``|O_t|``) and ``mass`` (``sum alpha``)."""

    classes: torch.Tensor
    vectors: torch.Tensor
    counts: torch.Tensor
    mass: torch.Tensor


@dataclass
class TokenScores:
    """Per counted candidate token: ``score`` ``s_j`` (NaN where not scored), ``matched``
    (has a fingerprint) and ``scored`` (enters the pooling)."""

    score: torch.Tensor
    matched: torch.Tensor
    scored: torch.Tensor


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


__all__ = ["FALLBACKS", "Fingerprints", "PooledScores", "SaliencyStats", "TokenSaliency",
           "TokenScores"]
