"""From per-layer attention statistics to token saliency ``alpha`` (SPEC section 1): the O(n)
normalisation that lives outside the kernels. Its twin is
:func:`trim_fast.reference.token_saliency_from_probs`, which averages per-head quantities."""
from __future__ import annotations

from typing import Sequence

import torch

from trim_fast.reference import SaliencyStats, TokenSaliency


def token_saliency(
    layer_stats: Sequence[SaliencyStats], *, w_row: float = 0.5, w_col: float = 0.5
) -> TokenSaliency:
    """``alpha = w_row * Q + w_col * K`` from the last ``L`` layers' statistics.

    ``Q_i = 1 - sum_{l,h} H_i / (L H log n_i)`` (1 where ``n_i = 1``);
    ``r_j = sum_{l,h} sum_i n_i A_ij / (L H m_j)``; ``K_j = r_j / (1 + r_j)``. Padding gets 0.
    """
    if len(layer_stats) == 0:
        raise ValueError("token_saliency: no layer statistics given (L must be >= 1)")
    first = layer_stats[0]
    n_i, m_j = first.row_visible, first.col_seen
    entropy = torch.zeros_like(first.row_entropy)
    weighted = torch.zeros_like(first.col_mass_weighted)
    heads = 0
    for st in layer_stats:
        if st.row_entropy.shape != entropy.shape:
            raise ValueError("token_saliency: layers disagree on the token layout")
        entropy = entropy + st.row_entropy
        weighted = weighted + st.col_mass_weighted
        heads += st.num_heads
    log_n = torch.log(n_i.clamp_min(1.0))
    row = torch.where(n_i > 1, 1.0 - entropy / (heads * log_n.clamp_min(1e-12)),
                      torch.ones_like(entropy))
    r = weighted / (heads * m_j.clamp_min(1.0))
    col = r / (1.0 + r)
    valid = n_i > 0
    row = torch.where(valid, row, torch.zeros_like(row))
    col = torch.where(valid, col, torch.zeros_like(col))
    return TokenSaliency(alpha=w_row * row + w_col * col, row=row, col=col)
