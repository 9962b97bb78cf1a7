"""From per-layer attention statistics to token saliency ``alpha`` (SPEC section 1): the O(n)
normalisation that lives outside the kernels. Its twin is
:func:`trim_fast.reference.token_saliency_from_probs`, which averages per-head quantities
(the SPEC formula, as the tests check)."""
from __future__ import annotations

from typing import Sequence

import torch

from trim_fast.types import SaliencyStats, TokenSaliency


def token_saliency(
    layer_stats: Sequence[SaliencyStats], *, w_row: float = 0.5, w_col: float = 0.5
) -> TokenSaliency:
    """``alpha = w_row * Q + w_col * K`` from the last ``L`` layers' statistics.

    ``Q_i = mean_{l,h} (1 - H_i / log n_i)`` (1 where ``n_i = 1``);
    ``r_j = mean_{l,h} sum_i n_i A_ij / m_j``; ``K_j = r_j / (1 + r_j)``, with each layer's own
    ``n_i``, ``m_j``. Padding gets 0.
    """
    if len(layer_stats) == 0:
        raise ValueError("token_saliency: no layer statistics given (L must be >= 1)")
    first = layer_stats[0]
    n_i = first.row_visible
    # Summed per layer with that layer's own n_i, m_j: layers may differ in window (Gemma).
    row_sum = torch.zeros_like(first.row_entropy)
    r_sum = torch.zeros_like(first.col_mass_weighted)
    heads = 0
    for st in layer_stats:
        if st.row_entropy.shape != row_sum.shape:
            raise ValueError("token_saliency: layers disagree on the token layout")
        n_l, m_l = st.row_visible, st.col_seen
        log_n = torch.log(n_l.clamp_min(1.0)).clamp_min(1e-12)
        row_sum = row_sum + torch.where(n_l > 1, st.num_heads - st.row_entropy / log_n,
                                        torch.full_like(row_sum, float(st.num_heads)))
        r_sum = r_sum + st.col_mass_weighted / m_l.clamp_min(1.0)
        heads += st.num_heads
    row = row_sum / heads
    r = r_sum / heads
    col = r / (1.0 + r)
    valid = n_i > 0
    row = torch.where(valid, row, torch.zeros_like(row))
    col = torch.where(valid, col, torch.zeros_like(col))
    return TokenSaliency(alpha=w_row * row + w_col * col, row=row, col=col)
