"""Selection (SPEC 4), the one path every face of the package selects through: combine the task
scores, round ``k``, keep the top ``k`` with ties to the lower pool index. Vectorised; the
oracle's twins are :func:`trim_fast.reference.select_top_k` and ``combine_tasks``."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

import torch

from trim_fast.config import COMBINE_MODES

logger = logging.getLogger("trim_fast")


def num_selected(pool_size: int, *, fraction: float | None = 0.05, k: int | None = None,
                 rounding: str = "half_up") -> int:
    """``k``, or ``fraction * |P|`` rounded half up on the decimal value (``rounding="less"``:
    ``int(fraction * |P|)`` in floating point, as LESS computes it), at least 1 for a non-empty
    pool."""
    if k is not None:
        if k < 1:
            raise ValueError(f"k must be >= 1 (an empty selection is not a selection), got {k}")
        return min(int(k), pool_size)
    if fraction is None or not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if pool_size == 0:
        return 0
    # Exact decimal product: 0.29 * 50 is 14.4999... in binary floating point, not 14.5.
    exact = Fraction(str(float(fraction))) * pool_size
    if rounding == "less":
        return max(1, int(fraction * pool_size))
    if rounding != "half_up":
        raise ValueError(f"rounding must be 'half_up' or 'less', got {rounding!r}")
    return max(1, min(pool_size, math.floor(exact + Fraction(1, 2))))


def select_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` best scores, best first; ties go to the lower index; ``-inf`` and
    NaN are never selected (so fewer than ``k`` may come back). ``LongTensor`` on the CPU."""
    if not isinstance(scores, torch.Tensor) or scores.ndim != 1:
        raise ValueError(f"select_top_k: scores must be a 1-D tensor, got "
                         f"{getattr(scores, 'shape', type(scores))}")
    if not scores.is_floating_point():
        scores = scores.double()
    k = int(k)
    if k < 0:
        raise ValueError(f"select_top_k: k must be >= 0, got {k}")
    scores = scores.detach().cpu()
    eligible = (~torch.isnan(scores)) & (scores != float("-inf"))
    index = eligible.nonzero().squeeze(1)
    # Stable descending sort of the eligible scores, in pool order: equal scores keep pool
    # order, so ties go to the lower index. (+0.0 and -0.0 compare equal, as in the reference.)
    order = torch.sort(scores[index], descending=True, stable=True).indices
    return index[order[:k]].clone()


def task_quantiles(task_scores: torch.Tensor) -> torch.Tensor:
    """``[T, P]`` scores to each example's quantile within its task: the share of the task's
    scored examples (finite scores) whose score is at most its own, in ``(0, 1]``. ``-inf`` and
    NaN stay as they are. Tasks whose scores sit on different scales become comparable."""
    scores = task_scores.double()
    out = scores.clone()
    for t in range(scores.shape[0]):
        row = scores[t]
        finite = torch.isfinite(row)
        n = int(finite.sum())
        if n == 0:
            continue
        ordered = torch.sort(row[finite]).values
        out[t, finite] = torch.searchsorted(ordered, row[finite], right=True).double() / n
    return out


def combine_tasks(task_scores: torch.Tensor | Sequence[torch.Tensor], how: str = "quantile") -> torch.Tensor:
    """``[T, P]`` per-task scores to ``[P]``: ``quantile`` (the best of the example's per-task
    quantiles, :func:`task_quantiles`: every task's best examples first, in turn; one task's
    scores as they are), ``max`` or
    ``mean`` of the raw scores. A list of ``[P]`` tensors is stacked first. ``-inf`` (no scored
    token) stays ``-inf`` under ``mean`` and loses to any finite score under ``max`` and
    ``quantile``."""
    if not isinstance(task_scores, torch.Tensor):
        task_scores = list(task_scores)
        if not task_scores:
            raise ValueError("combine_tasks: no task scores given")
        lengths = {t.shape for t in task_scores}
        if len(lengths) != 1:
            raise ValueError(f"combine_tasks: task score vectors differ in shape: {sorted(lengths)}")
        task_scores = torch.stack(task_scores)
    if task_scores.ndim != 2 or task_scores.shape[0] == 0:
        raise ValueError(f"combine_tasks: expected [tasks, pool] scores, got {tuple(task_scores.shape)}")
    if how == "max":
        return task_scores.amax(0)
    if how == "quantile":  # one task: its own scores (the same order, on their own scale)
        return task_scores[0] if task_scores.shape[0] == 1 else task_quantiles(task_scores).amax(0)
    if how == "mean":
        return task_scores.mean(0)
    raise ValueError(f"combine_tasks: how must be one of {COMBINE_MODES}, got {how!r}")


@dataclass
class Selection:
    """The top ``k`` of a pool: ``indices`` (pool positions, best first), the ``combined``
    ``[P]`` score they were chosen by, and the examples with no scored token (``-inf``)."""

    indices: list[int]
    combined: torch.Tensor
    k: int
    unscored: list[int] = field(default_factory=list)


def choose(task_scores: torch.Tensor, *, combine: str = "quantile", fraction: float | None = 0.05,
           k: int | None = None, rounding: str = "half_up") -> Selection:
    """SPEC 4 on ``[T, P]`` task scores: combine, round ``k``, keep the top ``k``."""
    combined = combine_tasks(task_scores, combine)
    if k is not None and k > combined.shape[0]:
        logger.warning("k=%d is more than the pool's %d examples: the whole pool is kept", k,
                       combined.shape[0])
    k = num_selected(int(combined.shape[0]), fraction=fraction, k=k, rounding=rounding)
    unscored = (combined == float("-inf")).nonzero().squeeze(1).tolist()
    return Selection(select_top_k(combined, k).tolist(), combined, k, unscored)


__all__ = ["Selection", "choose", "combine_tasks", "num_selected", "select_top_k", "task_quantiles"]
