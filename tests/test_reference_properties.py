"""Invariants of the reference (SPEC sections 1 and 4), checked on hypothesis-drawn inputs."""
from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trim_fast import reference as ref
from trim_fast.selection import num_selected
from trim_fast.saliency import token_saliency

FEW = settings(max_examples=30, deadline=None)
EPS = 1e-6  # float32 rounding of 1 - H / log n near a uniform or one-hot row


@st.composite
def attention_inputs(draw):
    b = draw(st.integers(1, 3))
    h_kv = draw(st.integers(1, 2))
    h = h_kv * draw(st.integers(1, 2))
    n = draw(st.integers(1, 7))
    d = draw(st.sampled_from([2, 4, 8]))
    causal = draw(st.booleans())
    window = draw(st.one_of(st.none(), st.integers(1, 8)))
    lens = draw(st.lists(st.integers(0, n), min_size=b, max_size=b))
    magnitude = draw(st.sampled_from([0.0, 0.1, 1.0, 10.0]))  # 0: uniform; 10: near one-hot
    seed = draw(st.integers(0, 2 ** 16))
    g = torch.Generator().manual_seed(seed)
    q = magnitude * torch.randn(b, h, n, d, generator=g)
    k = torch.randn(b, h_kv, n, d, generator=g)
    return q, k, dict(causal=causal, window=window, seq_lens=torch.tensor(lens))


@FEW
@given(attention_inputs())
def test_q_k_alpha_in_range(inputs):
    q, k, kw = inputs
    stats = ref.attention_saliency(q, k, **kw)
    sal = token_saliency([stats])
    valid = torch.arange(q.shape[2])[None, :] < kw["seq_lens"][:, None]
    assert bool(((sal.row >= -EPS) & (sal.row <= 1 + EPS)).all()), sal.row
    assert bool(((sal.col >= 0) & (sal.col < 1)).all()), sal.col
    assert bool(((sal.alpha >= -EPS) & (sal.alpha <= 1 + EPS)).all()), sal.alpha
    # padding is 0
    assert bool((sal.alpha[~valid] == 0).all())
    # every visible row of A sums to 1: head-summed column mass totals H * (valid tokens)
    torch.testing.assert_close(stats.col_mass.sum(-1),
                               q.shape[1] * valid.sum(-1).float(), atol=1e-4, rtol=1e-5)


@FEW
@given(attention_inputs())
def test_from_probs_matches_range(inputs):
    """The per-head form of SPEC 1 stays in range too, and agrees with the stats form."""
    q, k, kw = inputs
    n = q.shape[2]
    vis = ref.visibility_mask(n, causal=kw["causal"], seq_lens=kw["seq_lens"],
                              window=kw["window"], batch=q.shape[0])
    probs = ref.attention_probs(ref.attention_scores(q, k, vis))
    sal = ref.token_saliency_from_probs([probs], vis)
    assert bool(((sal.row >= -EPS) & (sal.row <= 1 + EPS)).all())
    assert bool(((sal.col >= 0) & (sal.col < 1)).all())
    other = token_saliency([ref.attention_saliency(q, k, **kw)])
    torch.testing.assert_close(other.alpha, sal.alpha, atol=1e-5, rtol=1e-5)


distinct_scores = st.lists(
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32),
    min_size=1, max_size=40, unique=True)


@FEW
@given(distinct_scores, st.integers(0, 50), st.randoms(use_true_random=False))
def test_permuting_the_pool_keeps_the_selection(values, k, rnd):
    scores = torch.tensor(values, dtype=torch.float32)
    perm = list(range(len(values)))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    chosen = ref.select_top_k(scores, k)
    chosen_perm = ref.select_top_k(scores[perm], k)
    # the same examples, in the same order of score
    assert perm[chosen_perm].tolist() == chosen.tolist()
    assert len(chosen) == min(k, len(values))


tied_scores = st.lists(
    st.sampled_from([0.0, 0.5, 1.0, -math.inf, math.nan]),
    min_size=1, max_size=40)


@FEW
@given(tied_scores, st.integers(0, 50))
def test_ties_go_to_the_lower_index(values, k):
    scores = torch.tensor(values, dtype=torch.float64)
    chosen = ref.select_top_k(scores, k).tolist()
    eligible = [i for i, v in enumerate(values) if math.isfinite(v)]
    assert len(chosen) == min(k, len(eligible))
    assert len(set(chosen)) == len(chosen)
    assert all(math.isfinite(values[i]) for i in chosen)
    left_out = set(eligible) - set(chosen)
    for i in chosen:
        for j in left_out:  # every kept example beats every eligible one left out
            assert values[i] > values[j] or (values[i] == values[j] and i < j)
    # listed in order of score, ties by index
    keys = [(-values[i], i) for i in chosen]
    assert keys == sorted(keys)


@FEW
@given(st.integers(1, 30), st.integers(1, 10))
def test_all_equal_scores_select_the_first_k(pool, k):
    chosen = ref.select_top_k(torch.full((pool,), 0.25), k)
    assert chosen.tolist() == list(range(min(k, pool)))


@FEW
@given(st.integers(0, 10_000), st.floats(0.0001, 1.0))
def test_num_selected_bounds(pool, fraction):
    k = num_selected(pool, fraction=fraction)
    if pool == 0:
        assert k == 0
    else:
        assert 1 <= k <= pool
        assert abs(k - fraction * pool) <= 0.5 + 1e-9 or k == 1
