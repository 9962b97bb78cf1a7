"""``n_i`` (keys row ``i`` sees) and ``m_j`` (rows that see key ``j``) in closed form, O(n)."""
from __future__ import annotations

import torch


def visible_counts(
    positions: torch.Tensor, lengths: torch.Tensor, *, causal: bool, window: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For tokens at ``positions`` (0-based within their sequence) of sequences of ``lengths``
    (same shape, broadcast), return ``(n_i, m_j)`` as float32. Positions past the length are
    padding and get 0 for both."""
    pos = positions.to(torch.int64)
    length = lengths.to(torch.int64)
    valid = pos < length
    if causal:
        n = pos + 1
        m = length - pos
        if window is not None:
            n = n.clamp(max=window)
            m = m.clamp(max=window)
    else:
        if window is None:
            n = torch.broadcast_tensors(length, pos)[0]  # [B, 1] with [1, N]
        else:
            lo = (pos - window + 1).clamp(min=0)
            hi = torch.minimum(pos + window - 1, length - 1)
            n = hi - lo + 1
        m = n  # symmetric visibility
    zero = torch.zeros_like(pos)
    return torch.where(valid, n, zero).float(), torch.where(valid, m, zero).float()
