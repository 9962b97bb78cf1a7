"""Selection (SPEC 4), vectorised: combine task scores, keep the top ``k`` with ties to the
lower pool index. Same results as :func:`trim_fast.reference.select_top_k`, without a Python
sort over the pool."""
from __future__ import annotations

from typing import Sequence

import torch

from trim_fast.reference import num_selected

COMBINE = ("max", "mean")


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


def combine_tasks(task_scores: torch.Tensor | Sequence[torch.Tensor], how: str = "max") -> torch.Tensor:
    """``[T, P]`` per-task scores to ``[P]``: ``max`` (default) or ``mean`` over tasks. A list of
    ``[P]`` tensors is stacked first. ``-inf`` (no scored token) stays ``-inf`` under ``mean``
    and loses to any finite score under ``max``."""
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
    if how == "mean":
        return task_scores.mean(0)
    raise ValueError(f"combine_tasks: how must be one of {COMBINE}, got {how!r}")


def select(scores: torch.Tensor, *, fraction: float | None = 0.05, k: int | None = None) -> torch.Tensor:
    """``select_top_k`` with ``k = num_selected(|P|, fraction=..., k=...)``."""
    return select_top_k(scores, num_selected(int(scores.shape[0]), fraction=fraction, k=k))


__all__ = ["select_top_k", "combine_tasks", "num_selected", "select", "COMBINE"]
