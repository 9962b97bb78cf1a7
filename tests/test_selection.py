"""select_top_k and combine_tasks (SPEC 4) against the reference."""
import pytest
import torch

from trim_fast import reference
from trim_fast.selection import choose, combine_tasks, num_selected, select_top_k


def tied_scores(seed, p=200):
    """Coarse values (many exact ties), with -inf, NaN, +inf and signed zeros mixed in."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(-3, 4, (p,), generator=g).float() / 4
    s[torch.rand(p, generator=g) < 0.1] = float("-inf")
    s[torch.rand(p, generator=g) < 0.05] = float("nan")
    s[5], s[6], s[7] = float("inf"), -0.0, 0.0
    return s


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [0, 1, 17, 150, 500])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_select_top_k_matches_reference(seed, k, dtype):
    s = tied_scores(seed).to(dtype)
    got = select_top_k(s, k)
    assert got.dtype == torch.long
    assert got.tolist() == reference.select_top_k(s, k).tolist()


def test_ties_go_to_lower_index_and_invalid_never_selected():
    s = torch.tensor([0.5, 0.7, 0.5, float("-inf"), 0.7, float("nan"), 0.5])
    assert select_top_k(s, 10).tolist() == [1, 4, 0, 2, 6]
    assert select_top_k(torch.full((4,), float("-inf")), 2).tolist() == []


def test_select_top_k_rejects_bad_input():
    with pytest.raises(ValueError, match="k must be >= 0"):
        select_top_k(torch.zeros(3), -1)
    with pytest.raises(ValueError, match="1-D"):
        select_top_k(torch.zeros(2, 3), 1)


@pytest.mark.parametrize("how", ["quantile", "max", "mean"])
def test_combine_tasks_matches_reference(how):
    g = torch.Generator().manual_seed(3)
    t = torch.randn(3, 50, generator=g)
    t[0, :5] = float("-inf")
    t[:, 10] = float("-inf")
    torch.testing.assert_close(combine_tasks(t, how).double(), reference.combine_tasks(t, how).double(),
                               equal_nan=True)
    torch.testing.assert_close(combine_tasks(list(t), how).double(), reference.combine_tasks(t, how).double())


def test_combine_tasks_rejects_bad_input():
    with pytest.raises(ValueError, match="how must be"):
        combine_tasks(torch.zeros(2, 3), "median")
    with pytest.raises(ValueError, match="tasks, pool"):
        combine_tasks(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="differ in shape"):
        combine_tasks([torch.zeros(3), torch.zeros(4)])


def test_choose_combines_rounds_and_keeps_the_top():
    s = torch.linspace(0, 1, 101)
    assert num_selected(101) == 5
    assert choose(s[None]).indices == reference.select_top_k(s, 5).tolist()
    assert choose(s[None], k=3).indices == [100, 99, 98]
    two = torch.stack([s, s.flip(0)])
    two[:, 7] = float("-inf")
    sel = choose(two, combine="max", fraction=0.02)
    assert sel.k == 2 and sel.indices == [0, 100] and sel.unscored == [7]


def test_less_rounds_k_as_less_does():
    assert num_selected(59, fraction=0.05) == 3  # 2.95 -> 3
    assert num_selected(59, fraction=0.05, rounding="less") == 2  # int(2.95)
    assert num_selected(100, fraction=0.29) == 29
    assert num_selected(100, fraction=0.29, rounding="less") == 28  # int(28.999999999999996)
    assert num_selected(10, fraction=0.05, rounding="less") == 1  # never 0 for a non-empty pool


from hypothesis import given, settings, strategies as st  # noqa: E402

_score = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, -0.0, 0.25, 0.5, float("-inf")]))


@settings(max_examples=150, deadline=None)
@given(values=st.lists(_score, max_size=40), k=st.integers(0, 45))
def test_select_top_k_property(values, k):
    s = torch.tensor(values, dtype=torch.float32)
    assert select_top_k(s, k).tolist() == reference.select_top_k(s, k).tolist()
