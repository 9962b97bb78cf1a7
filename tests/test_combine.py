"""Several tasks, one coreset (SPEC 4, issue 18): ``combine = quantile`` gives every task its
share whatever the scale of its scores; ``max`` of raw scores (LESS's) is kept."""
import pytest
import torch

from trim_fast import reference
from trim_fast.config import SelectionConfig
from trim_fast.selection import choose, combine_tasks, task_quantiles


def scaled_tasks(tasks=3, per_task=40, seed=0):
    """Each task's own examples score high on that task; task t's scores sit t * 0.05 above the
    one before it (as two tasks' top scores of 0.96 and 0.90 did on the demo pool)."""
    g = torch.Generator().manual_seed(seed)
    p = tasks * per_task
    owner = torch.arange(p) % tasks
    s = 0.5 + 0.1 * torch.rand(tasks, p, generator=g)
    for t in range(tasks):
        s[t, owner == t] += 0.3
        s[t] += 0.05 * t
    return s, owner


def test_quantile_gives_each_task_its_share_and_max_does_not():
    s, owner = scaled_tasks()
    k = 30
    fair = choose(s, combine="quantile", k=k).indices
    assert [int((owner[fair] == t).sum()) for t in range(3)] == [10, 10, 10]
    raw = choose(s, combine="max", k=k).indices
    assert int((owner[raw] == 0).sum()) < 5  # the task of the lowest scale is crowded out


def test_quantiles_and_the_default():
    s = torch.tensor([[0.1, 0.9, float("-inf"), 0.5], [7.0, 1.0, 3.0, 3.0]])
    q = task_quantiles(s)
    assert q[0].tolist() == pytest.approx([1 / 3, 1.0, float("-inf"), 2 / 3])
    assert q[1].tolist() == pytest.approx([1.0, 0.25, 0.75, 0.75])  # ties share a quantile
    assert combine_tasks(s).tolist() == pytest.approx([1.0, 1.0, 0.75, 0.75])
    assert torch.equal(combine_tasks(s[:1]), s[0])  # one task: its own scores
    assert SelectionConfig().combine == "quantile"
    torch.testing.assert_close(combine_tasks(s).double(), reference.combine_tasks(s).double())
    # no scored example in a task: its row stays -inf, the others decide
    s[0] = float("-inf")
    assert combine_tasks(s).tolist() == pytest.approx([1.0, 0.25, 0.75, 0.75])
