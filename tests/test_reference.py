"""The reference (SPEC sections 1-4) against hand-computed cases, and its input checks.

Every expected number here is worked out by hand in the test (from the SPEC formula), never by
calling the function under test another way.
"""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from trim_fast import reference as ref
from trim_fast.ops.attention_saliency.naive import attention_saliency_varlen_naive
from trim_fast.selection import num_selected
from trim_fast.ops import attention_saliency as ops_attention_saliency
from trim_fast.ops.attention_saliency import attention_saliency_varlen
from trim_fast.ops.attention_saliency.counts import visible_counts
from trim_fast.saliency import token_saliency

LN2, LN3 = math.log(2.0), math.log(3.0)


def _tensor(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def _probs(q, k, visible):
    """``[B, H, N, N]`` attention probabilities of the reference (float64)."""
    return ref.attention_probs(ref.attention_scores(q, k, visible))


# ============================================================================================
# Section 1: visibility
# ============================================================================================


def test_visibility_causal():
    want = _tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).bool()
    assert torch.equal(ref.visibility_mask(3, causal=True)[0], want)


def test_visibility_bidirectional():
    assert bool(ref.visibility_mask(3, causal=False).all())


def test_visibility_right_padding():
    vis = ref.visibility_mask(4, causal=True, seq_lens=torch.tensor([2, 4]), batch=2)
    want0 = _tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]).bool()
    want1 = _tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    assert torch.equal(vis[0], want0)
    assert torch.equal(vis[1], want1)
    vis_bi = ref.visibility_mask(3, causal=False, seq_lens=torch.tensor([2]), batch=1)
    assert torch.equal(vis_bi[0], _tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0]]).bool())


def test_visibility_sliding_window():
    causal = ref.visibility_mask(4, causal=True, window=2)[0]
    want = _tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]).bool()
    assert torch.equal(causal, want)
    bidir = ref.visibility_mask(4, causal=False, window=2)[0]  # |i - j| < 2
    want = _tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]).bool()
    assert torch.equal(bidir, want)


def test_visibility_window_must_be_positive():
    with pytest.raises(ValueError, match="window must be a positive"):
        ref.visibility_mask(4, window=0)


# ============================================================================================
# Section 1: token saliency from probabilities
# ============================================================================================


def _uniform_probs(visible):
    v = visible.double()
    return (v / v.sum(-1, keepdim=True).clamp_min(1))[:, None]  # [B, 1, N, N]


@pytest.mark.parametrize("causal", [True, False])
def test_uniform_rows_give_q0_k_half(causal):
    n = 5
    vis = ref.visibility_mask(n, causal=causal)
    sal = ref.token_saliency_from_probs([_uniform_probs(vis)], vis)
    # H_i = log n_i, so Q_i = 0 where n_i > 1 (causal row 0 sees one key: Q = 1).
    want_q = torch.zeros(n)
    if causal:
        want_q[0] = 1.0
    torch.testing.assert_close(sal.row[0], want_q, atol=1e-6, rtol=0)
    # sum_i A_ij n_i = sum over the m_j rows that see j of 1 = m_j, so r_j = 1 and K_j = 1/2.
    torch.testing.assert_close(sal.col[0], torch.full((n,), 0.5), atol=1e-6, rtol=0)


def test_one_hot_rows_give_q1():
    n = 3
    vis = ref.visibility_mask(n, causal=True)
    a = torch.zeros(1, 1, n, n, dtype=torch.float64)
    a[..., 0] = 1.0  # every row attends only to key 0
    sal = ref.token_saliency_from_probs([a], vis)
    torch.testing.assert_close(sal.row[0], torch.ones(n), atol=1e-7, rtol=0)
    # r_0 = (1*1 + 1*2 + 1*3) / m_0 = 6 / 3 = 2, K_0 = 2/3; keys 1, 2 get nothing: K = 0.
    torch.testing.assert_close(sal.col[0], torch.tensor([2 / 3, 0.0, 0.0]), atol=1e-7, rtol=0)


def test_single_token_sequence_q1():
    vis = ref.visibility_mask(1, causal=False)
    sal = ref.token_saliency_from_probs([torch.ones(1, 2, 1, 1, dtype=torch.float64)], vis)
    # n = 1: Q = 1 by definition; r = 1 * 1 / 1 = 1, K = 1/2.
    assert sal.row.item() == 1.0
    assert sal.col.item() == 0.5
    assert sal.alpha.item() == 0.75


HAND_PROBS = [[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.5, 0.25, 0.25]]


def _hand_case_expected():
    """Q, r of ``HAND_PROBS`` (causal, n = 3) worked out from SPEC section 1."""
    h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    h2 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # = 1.5 ln 2
    q = [1.0, 1.0 - h1 / LN2, 1.0 - h2 / LN3]
    # n_i = (1, 2, 3); m_j = (3, 2, 1)
    r = [(1.0 * 1 + 0.25 * 2 + 0.5 * 3) / 3, (0.75 * 2 + 0.25 * 3) / 2, (0.25 * 3) / 1]
    return q, r


def test_hand_computed_causal_3x3():
    vis = ref.visibility_mask(3, causal=True)
    a = _tensor(HAND_PROBS)[None, None]
    sal = ref.token_saliency_from_probs([a], vis)
    q, r = _hand_case_expected()
    assert r == [1.0, 1.125, 0.75]
    torch.testing.assert_close(sal.row[0], torch.tensor(q, dtype=torch.float32))
    torch.testing.assert_close(sal.col[0], torch.tensor([x / (1 + x) for x in r]))
    torch.testing.assert_close(sal.alpha[0], torch.tensor([0.5 * qi + 0.5 * x / (1 + x)
                                                           for qi, x in zip(q, r)]))


def test_mean_over_layers_and_heads_is_of_q_and_r():
    """A second layer (two uniform heads) averages Q and r over all 3 heads, then K = r/(1+r)."""
    vis = ref.visibility_mask(3, causal=True)
    hand = _tensor(HAND_PROBS)[None, None]
    uniform = _uniform_probs(vis).expand(1, 2, 3, 3)
    sal = ref.token_saliency_from_probs([hand, uniform], vis)
    q, r = _hand_case_expected()
    want_q = [1.0] + [qi / 3 for qi in q[1:]]  # uniform heads have Q = 0 (row 0: Q = 1)
    want_r = [(x + 2 * 1.0) / 3 for x in r]  # uniform heads have r = 1
    torch.testing.assert_close(sal.row[0], torch.tensor(want_q, dtype=torch.float32))
    torch.testing.assert_close(sal.col[0], torch.tensor([x / (1 + x) for x in want_r]))


def test_weights_w_row_w_col():
    vis = ref.visibility_mask(3, causal=True)
    a = _tensor(HAND_PROBS)[None, None]
    sal = ref.token_saliency_from_probs([a], vis, w_row=0.3, w_col=0.7)
    q, r = _hand_case_expected()
    want = [0.3 * qi + 0.7 * x / (1 + x) for qi, x in zip(q, r)]
    torch.testing.assert_close(sal.alpha[0], torch.tensor(want))
    only_row = ref.token_saliency_from_probs([a], vis, w_row=1.0, w_col=0.0)
    torch.testing.assert_close(only_row.alpha[0], torch.tensor(q, dtype=torch.float32))


def test_padding_gets_zero():
    """Length 3 of 4: padded row/column get 0 whatever the padded probabilities hold, and the
    valid tokens are those of the unpadded hand case."""
    vis = ref.visibility_mask(4, causal=True, seq_lens=torch.tensor([3]), batch=1)
    a = torch.full((1, 1, 4, 4), 0.25, dtype=torch.float64)  # garbage in the padded row
    a[0, 0, :3, :3] = _tensor(HAND_PROBS)
    a[0, 0, :3, 3] = 0.0
    sal = ref.token_saliency_from_probs([a], vis)
    q, r = _hand_case_expected()
    torch.testing.assert_close(sal.row[0], torch.tensor(q + [0.0], dtype=torch.float32))
    torch.testing.assert_close(sal.col[0], torch.tensor([x / (1 + x) for x in r] + [0.0]))
    assert sal.alpha[0, 3].item() == 0.0


def test_no_layers_is_an_error():
    with pytest.raises(ValueError, match="no attention layers"):
        ref.token_saliency_from_probs([], ref.visibility_mask(3))
    with pytest.raises(ValueError, match="no layer statistics"):
        token_saliency([])


# ============================================================================================
# Section 1: statistics from q, k
# ============================================================================================


@pytest.mark.parametrize("causal", [True, False])
def test_zero_queries_give_uniform_attention(causal):
    b, h, n, d = 1, 2, 4, 8
    q = torch.zeros(b, h, n, d)
    k = torch.randn(b, h, n, d, generator=torch.Generator().manual_seed(0))
    st = ref.attention_saliency(q, k, causal=causal)
    n_i = torch.arange(1, n + 1).double() if causal else torch.full((n,), float(n)).double()
    m_j = torch.arange(n, 0, -1).double() if causal else torch.full((n,), float(n)).double()
    torch.testing.assert_close(st.row_visible[0], n_i.float())
    torch.testing.assert_close(st.col_seen[0], m_j.float())
    # A_ij = 1/n_i: H_i = log n_i per head; lse = log(n_i * e^0).
    torch.testing.assert_close(st.row_entropy[0], (h * torch.log(n_i)).float())
    torch.testing.assert_close(st.lse[0], torch.log(n_i).float().expand(h, n))
    # sum_i A_ij n_i = m_j per head; C_j = sum over rows i that see j of 1/n_i.
    torch.testing.assert_close(st.col_mass_weighted[0], (h * m_j).float())
    if causal:
        col_mass = [sum(1.0 / (i + 1) for i in range(j, n)) for j in range(n)]
    else:
        col_mass = [1.0] * n
    torch.testing.assert_close(st.col_mass[0], h * torch.tensor(col_mass, dtype=torch.float32))
    sal = token_saliency([st])
    want_q = torch.zeros(n)
    if causal:
        want_q[0] = 1.0
    torch.testing.assert_close(sal.row[0], want_q, atol=1e-6, rtol=0)
    torch.testing.assert_close(sal.col[0], torch.full((n,), 0.5), atol=1e-6, rtol=0)


def test_gqa_query_head_reads_kv_head_h_over_group():
    """H = 4, H_kv = 2: query heads 0, 1 read KV head 0 and heads 2, 3 read KV head 1.
    Changing only KV head 0 changes the per-head lse of heads 0, 1 and nothing else."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 5, 8, generator=g)
    k = torch.randn(1, 2, 5, 8, generator=g)
    k2 = k.clone()
    k2[:, 0] = torch.randn(5, 8, generator=g)
    lse_a = ref.attention_saliency(q, k).lse[0]
    lse_b = ref.attention_saliency(q, k2).lse[0]
    changed = [not torch.equal(lse_a[h], lse_b[h]) for h in range(4)]
    assert changed == [True, True, False, False]
    # MQA: one KV head serves all query heads; q with equal heads then gives equal heads.
    q_same = q[:, :1].expand(1, 4, 5, 8).contiguous()
    st = ref.attention_saliency(q_same, k[:, :1])
    assert all(torch.equal(st.lse[0, 0], st.lse[0, h]) for h in range(4))


def _random_qk(seed, b=2, h=2, h_kv=1, n=6, d=4, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(b, h, n, d, generator=g),
            scale * torch.randn(b, h_kv, n, d, generator=g))


LAYOUTS = [
    dict(causal=True, seq_lens=None, window=None),
    dict(causal=False, seq_lens=None, window=None),
    dict(causal=True, seq_lens=[4, 6], window=None),
    dict(causal=False, seq_lens=[6, 2], window=None),
    dict(causal=True, seq_lens=[5, 6], window=3),
    dict(causal=False, seq_lens=None, window=2),
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_token_saliency_from_stats_equals_from_probs(layout):
    """The O(n) normalisation of head-summed stats equals the per-head means of SPEC 1."""
    causal, window = layout["causal"], layout["window"]
    seq_lens = None if layout["seq_lens"] is None else torch.tensor(layout["seq_lens"])
    layers = [_random_qk(seed) for seed in (2, 3)]
    n = layers[0][0].shape[2]
    vis = ref.visibility_mask(n, causal=causal, seq_lens=seq_lens, window=window, batch=2)
    probs = [_probs(q, k, vis) for q, k in layers]
    stats = [ref.attention_saliency(q, k, causal=causal, seq_lens=seq_lens, window=window)
             for q, k in layers]
    want = ref.token_saliency_from_probs(probs, vis, w_row=0.4, w_col=0.6)
    got = token_saliency(stats, w_row=0.4, w_col=0.6)
    for name in ("row", "col", "alpha"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-5, rtol=1e-5)
    # The public entry's closed-form counts equal the reference's counted visibility.
    for (q, k), st in zip(layers, stats):
        pub = ops_attention_saliency(q, k, causal=causal, seq_lens=seq_lens, window=window,
                                     backend="torch")
        for name in ("row_visible", "col_seen"):
            assert torch.equal(getattr(pub, name), getattr(st, name)), name


def test_layers_with_different_windows_use_their_own_counts():
    """Uniform attention in every layer gives Q = 0, K = 1/2 even when one layer is windowed
    (n_i differs per layer, as in models alternating sliding and global attention)."""
    n = 5
    q = torch.zeros(1, 1, n, 4)
    k = torch.randn(1, 1, n, 4, generator=torch.Generator().manual_seed(4))
    full = ref.attention_saliency(q, k, causal=True)
    windowed = ref.attention_saliency(q, k, causal=True, window=2)
    sal = token_saliency([full, windowed])
    torch.testing.assert_close(sal.row[0], torch.tensor([1.0, 0, 0, 0, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(sal.col[0], torch.full((n,), 0.5), atol=1e-6, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, 1, 2, 3, 9])
def test_visible_counts_equal_mask_sums(causal, window):
    n = 7
    lens = torch.tensor([7, 4, 1, 0])
    vis = ref.visibility_mask(n, causal=causal, seq_lens=lens, window=window, batch=4)
    pos = torch.arange(n)[None, :].expand(4, n)
    n_i, m_j = visible_counts(pos, lens[:, None], causal=causal, window=window)
    assert torch.equal(n_i, vis.sum(-1).float())
    assert torch.equal(m_j, vis.sum(-2).float())
    # positions [1, N] broadcast against lengths [B, 1], as the public entry calls it
    n_b, m_b = visible_counts(torch.arange(n)[None, :], lens[:, None], causal=causal,
                              window=window)
    assert torch.equal(n_b, n_i) and torch.equal(m_b, m_j)


# ============================================================================================
# Section 2: fingerprints
# ============================================================================================


def test_build_fingerprints_hand_case():
    hidden = _tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], torch.float32)
    token_ids = torch.tensor([7, 7, 5])
    alpha = torch.tensor([1.0, 3.0, 0.5])
    bank = ref.build_fingerprints(hidden, token_ids, alpha)
    assert bank.classes.tolist() == [5, 7]
    # class 5: 0.5 * (0.6, 0.8) normalised; class 7: 1*(1, 0) + 3*(0, 1) = (1, 3) / sqrt(10).
    want = torch.tensor([[0.6, 0.8], [1 / math.sqrt(10), 3 / math.sqrt(10)]])
    torch.testing.assert_close(bank.vectors, want)
    assert bank.counts.tolist() == [1, 2]
    torch.testing.assert_close(bank.mass, torch.tensor([0.5, 4.0]))


def test_build_fingerprints_drops_cancelling_and_zero_alpha_classes():
    hidden = _tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 5.0], [2.0, 2.0]])
    token_ids = torch.tensor([9, 9, 4, 4, 3])
    alpha = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.2], dtype=torch.float64)
    bank = ref.build_fingerprints(hidden, token_ids, alpha)
    # 9: 0.5*(1,0) + 0.5*(-1,0) = 0 (dropped); 4: alpha 0 (dropped); 3 kept.
    assert bank.classes.tolist() == [3]
    torch.testing.assert_close(bank.vectors, torch.tensor([[0.5 ** 0.5, 0.5 ** 0.5]]))
    # A weighted sum just under the 1e-6 norm is dropped too.
    near = ref.build_fingerprints(_tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]),
                                  torch.tensor([9, 9, 3]),
                                  _tensor([0.5, 0.5 - 5e-7, 1.0]))
    assert near.classes.tolist() == [3]


def test_build_fingerprints_errors():
    with pytest.raises(ValueError, match="no counted tokens"):
        ref.build_fingerprints(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    with pytest.raises(ValueError, match="zero weighted sum"):
        ref.build_fingerprints(_tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([2, 2]),
                               _tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="zero weighted sum"):
        ref.build_fingerprints(_tensor([[1.0, 0.0]]), torch.tensor([2]), _tensor([0.0]))
    with pytest.raises(ValueError, match="hidden states contains 1 NaN"):
        ref.build_fingerprints(_tensor([[1.0, float("nan")]]), torch.tensor([2]), _tensor([1.0]))
    with pytest.raises(ValueError, match="alpha contains 1 NaN"):
        ref.build_fingerprints(_tensor([[1.0, 0.0]]), torch.tensor([2]), _tensor([float("nan")]))
    with pytest.raises(ValueError, match="zero vector"):
        ref.build_fingerprints(_tensor([[0.0, 0.0]]), torch.tensor([2]), _tensor([1.0]))
    with pytest.raises(ValueError, match=r"expected hidden \[M, d\]"):
        ref.build_fingerprints(_tensor([[1.0, 0.0]]), torch.tensor([2, 3]), _tensor([1.0]))
    with pytest.raises(ValueError, match=r"expected hidden \[M, d\]"):
        ref.build_fingerprints(_tensor([1.0, 0.0]), torch.tensor([2]), _tensor([1.0]))


# ============================================================================================
# Section 3: scoring
# ============================================================================================


def _unit_bank():
    """Classes 5 -> (1, 0) and 7 -> (0, 1)."""
    return ref.Fingerprints(classes=torch.tensor([5, 7]), vectors=torch.eye(2),
                            counts=torch.tensor([1, 1]), mass=torch.tensor([1.0, 1.0]))


def test_token_scores_matched_is_cos():
    hidden = _tensor([[3.0, 4.0], [3.0, 4.0], [-1.0, 0.0]])
    ts = ref.token_scores(hidden, torch.tensor([5, 7, 7]), _unit_bank())
    torch.testing.assert_close(ts.score, torch.tensor([0.6, 0.8, 0.0]))
    assert ts.matched.tolist() == [True, True, True]
    assert ts.scored.tolist() == [True, True, True]


@pytest.mark.parametrize("lam", [0.9, 0.5, 0.0, 1.0])
def test_token_scores_fallback_nearest(lam):
    # token 9 has no fingerprint: (1 - lambda) * max(cos to (1,0), cos to (0,1)).
    hidden = _tensor([[3.0, 4.0], [-3.0, -4.0], [4.0, 3.0]])
    ts = ref.token_scores(hidden, torch.tensor([9, 9, 5]), _unit_bank(), fallback_penalty=lam)
    want = torch.tensor([(1 - lam) * 0.8, (1 - lam) * -0.6, 0.8])
    torch.testing.assert_close(ts.score, want)
    assert ts.matched.tolist() == [False, False, True]
    assert ts.scored.tolist() == [True, True, True]


def test_token_scores_fallback_zero_and_skip():
    hidden = _tensor([[3.0, 4.0], [3.0, 4.0]])
    ids = torch.tensor([9, 7])
    zero = ref.token_scores(hidden, ids, _unit_bank(), fallback="zero")
    torch.testing.assert_close(zero.score, torch.tensor([0.0, 0.8]))
    assert zero.scored.tolist() == [True, True] and zero.matched.tolist() == [False, True]
    skip = ref.token_scores(hidden, ids, _unit_bank(), fallback="skip")
    assert math.isnan(skip.score[0].item()) and skip.score[1].item() == pytest.approx(0.8)
    assert skip.scored.tolist() == [False, True] and skip.matched.tolist() == [False, True]


def test_token_scores_errors():
    hidden, ids = _tensor([[3.0, 4.0]]), torch.tensor([5])
    with pytest.raises(ValueError, match="fallback must be one of"):
        ref.token_scores(hidden, ids, _unit_bank(), fallback="closest")
    for lam in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"lambda\) must be in \[0, 1\]"):
            ref.token_scores(hidden, ids, _unit_bank(), fallback_penalty=lam)
    with pytest.raises(ValueError, match="hidden states contains 1 NaN"):
        ref.token_scores(_tensor([[float("nan"), 1.0]]), ids, _unit_bank())
    with pytest.raises(ValueError, match="zero vector"):
        ref.token_scores(_tensor([[0.0, 0.0]]), ids, _unit_bank())
    with pytest.raises(ValueError, match=r"expected hidden \[M, d\] and token_ids \[M\]"):
        ref.token_scores(hidden, torch.tensor([5, 7]), _unit_bank())
    with pytest.raises(ValueError, match="hidden size 3 differs"):
        ref.token_scores(_tensor([[1.0, 2.0, 3.0]]), ids, _unit_bank())


def test_document_frequency_counts_each_example_once():
    df, n = ref.document_frequency([torch.tensor([1, 1, 2, 1]), [2, 3], torch.tensor([1])])
    assert n == 3
    assert df == Counter({1: 2, 2: 2, 3: 1})


def test_idf_formula():
    df, n = Counter({1: 2, 2: 3, 3: 1}), 3
    got = ref.idf(torch.tensor([1, 2, 3, 4]), df, n)
    # ln((1 + N) / (1 + df)) + 1 with N = 3
    want = torch.tensor([math.log(4 / 3) + 1, math.log(4 / 4) + 1, math.log(4 / 2) + 1,
                         math.log(4 / 1) + 1])
    torch.testing.assert_close(got, want)


def _scores(values, matched, scored):
    return ref.TokenScores(score=torch.tensor(values, dtype=torch.float32),
                           matched=torch.tensor(matched), scored=torch.tensor(scored))


def test_example_score_default_weights_and_coverage():
    ts = _scores([0.6, 0.8, 0.08, float("nan")], [True, True, False, False],
                 [True, True, True, False])
    es = ref.example_score(ts)
    mean = (0.6 + 0.8 + 0.08) / 3
    assert es.mean == pytest.approx(mean, abs=1e-6)
    assert es.max == pytest.approx(0.8, abs=1e-6)
    assert es.coverage == pytest.approx(2 / 3)
    assert (es.n_scored, es.n_matched) == (3, 2)
    assert es.score == pytest.approx(0.5 * mean + 0.5 * 0.8 + 0.05 * 2 / 3, abs=1e-6)


def test_example_score_idf_weights_and_custom_parts():
    ts = _scores([0.6, 0.8, 0.08, 0.9], [True, True, False, False], [True, True, True, False])
    w = torch.tensor([1.0, 2.0, 3.0, 100.0])  # the unscored token's weight must not count
    es = ref.example_score(ts, w)
    mean = (1 * 0.6 + 2 * 0.8 + 3 * 0.08) / 6
    assert es.mean == pytest.approx(mean, abs=1e-6)
    assert es.score == pytest.approx(0.5 * mean + 0.5 * 0.8 + 0.05 * 2 / 3, abs=1e-6)
    custom = ref.example_score(ts, w, w_mean=0.2, w_max=0.3, w_coverage=1.0)
    assert custom.score == pytest.approx(0.2 * mean + 0.3 * 0.8 + 1.0 * 2 / 3, abs=1e-6)
    only_cov = ref.example_score(ts, w, w_mean=0.0, w_max=0.0, w_coverage=1.0)
    assert only_cov.score == pytest.approx(2 / 3)


def test_example_with_no_scored_token_is_minus_inf():
    ts = _scores([float("nan")] * 2, [False, False], [False, False])
    es = ref.example_score(ts)
    assert es.score == float("-inf")
    assert (es.n_scored, es.n_matched) == (0, 0)
    # skip fallback end to end: no token has a fingerprint, so nothing is scored.
    skipped = ref.token_scores(_tensor([[1.0, 2.0]]), torch.tensor([42]), _unit_bank(),
                               fallback="skip")
    assert ref.example_score(skipped).score == float("-inf")


# ============================================================================================
# Section 4: selection
# ============================================================================================

NEG_INF = float("-inf")


def test_combine_tasks():
    s = torch.tensor([[1.0, 5.0, NEG_INF, NEG_INF], [3.0, 2.0, 0.0, NEG_INF]])
    assert ref.combine_tasks(s, "max").tolist() == [3.0, 5.0, 0.0, NEG_INF]
    assert ref.combine_tasks(s, "mean").tolist() == [2.0, 3.5, NEG_INF, NEG_INF]
    # quantile (the default): task 0 scores 2 examples (1 -> 1/2, 5 -> 1), task 1 three
    # (3 -> 1, 2 -> 2/3, 0 -> 1/3); the best of each example's quantiles
    assert ref.combine_tasks(s).tolist() == [1.0, 1.0, pytest.approx(1 / 3), NEG_INF]
    with pytest.raises(ValueError, match="how must be 'quantile', 'max' or 'mean'"):
        ref.combine_tasks(s, "sum")
    with pytest.raises(ValueError, match=r"expected \[tasks, pool\]"):
        ref.combine_tasks(torch.zeros(4))
    with pytest.raises(ValueError, match=r"expected \[tasks, pool\]"):
        ref.combine_tasks(torch.zeros(0, 4))


@pytest.mark.parametrize("pool, fraction, want", [
    (100, 0.05, 5),
    (10, 0.05, 1),    # 0.5 rounds half up to 1
    (30, 0.05, 2),    # 1.5 -> 2
    (50, 0.29, 15),   # 14.5 -> 15 (14.4999... in binary floating point)
    (100, 0.145, 15),  # 14.5 -> 15
    (70, 0.05, 4),    # 3.5 -> 4
    (29, 0.05, 1),    # 1.45 -> 1
    (10, 0.01, 1),    # 0.1 rounds to 0, but at least 1
    (7, 1.0, 7),
    (0, 0.05, 0),
])
def test_num_selected_fraction(pool, fraction, want):
    assert num_selected(pool, fraction=fraction) == want


def test_num_selected_explicit_k_and_errors():
    assert num_selected(100, k=3) == 3
    assert num_selected(10, k=25) == 10
    assert num_selected(10, fraction=None, k=4) == 4
    for bad in (0, -1):  # SPEC 4: k = 0 is refused
        with pytest.raises(ValueError, match="k must be >= 1"):
            num_selected(10, k=bad)
    for bad in (0.0, -0.1, 1.5, None):
        with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
            num_selected(10, fraction=bad)


def test_select_top_k_order_and_ties():
    s = torch.tensor([0.5, 0.9, 0.5, NEG_INF, float("nan"), 0.9, 0.1])
    assert ref.select_top_k(s, 3).tolist() == [1, 5, 0]
    assert ref.select_top_k(s, 4).tolist() == [1, 5, 0, 2]
    # k larger than the finite count: -inf and NaN are never selected.
    assert ref.select_top_k(s, 10).tolist() == [1, 5, 0, 2, 6]
    assert ref.select_top_k(s, 0).tolist() == []
    assert ref.select_top_k(torch.full((4,), NEG_INF), 2).tolist() == []
    assert ref.select_top_k(torch.tensor([0.0, float("inf"), -0.0]), 3).tolist() == [1, 0, 2]


def test_select_top_k_errors():
    with pytest.raises(ValueError, match="k must be >= 0"):
        ref.select_top_k(torch.tensor([1.0, 2.0]), -1)
    with pytest.raises(ValueError, match=r"expected \[pool\] scores"):
        ref.select_top_k(torch.zeros(2, 3), 1)


# ============================================================================================
# Bad input to attention_saliency (reference and public entry)
# ============================================================================================


def _qk(h=2, h_kv=1, n=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(5)
    return (torch.randn(1, h, n, 8, generator=g).to(dtype),
            torch.randn(1, h_kv, n, 8, generator=g).to(dtype))


def _public_reference(q, k, **kw):
    return ops_attention_saliency(q, k, backend="torch", **kw)


BAD_QK_CASES = [
    ("ndim", lambda: (torch.zeros(2, 4, 8), torch.zeros(2, 4, 8)), {},
     ValueError, r"must be \[B, H, N, D\]"),
    ("heads", lambda: _qk(h=3, h_kv=2), {}, ValueError, r"multiple of key/value heads"),
    ("int dtype", lambda: tuple(t.long() for t in _qk()), {}, TypeError, "floating point"),
    ("mixed dtype", lambda: (_qk()[0], _qk()[1].double()), {}, TypeError, "share a dtype"),
    ("head dim", lambda: (_qk()[0], _qk()[1][..., :4]), {}, ValueError, "head dims differ"),
    ("seq len", lambda: (_qk()[0], _qk()[1][:, :, :3]), {}, ValueError,
     "share batch and sequence length"),
    ("seq_lens high", _qk, dict(seq_lens=torch.tensor([5])), ValueError,
     r"seq_lens out of range"),
    ("seq_lens negative", _qk, dict(seq_lens=torch.tensor([-1])), ValueError,
     r"seq_lens out of range"),
    ("seq_lens shape", _qk, dict(seq_lens=torch.tensor([4, 4])), ValueError,
     r"seq_lens must be an integer tensor of shape \[1\]"),
    ("seq_lens float", _qk, dict(seq_lens=torch.tensor([4.0])), ValueError,
     r"seq_lens must be an integer tensor"),
    ("nan q", lambda: (_qk()[0].index_fill(2, torch.tensor([1]), float("nan")), _qk()[1]), {},
     ValueError, "q contains 16 NaN/Inf"),  # 2 heads x 8 dims at position 1
    ("inf k", lambda: (_qk()[0], _qk()[1].index_fill(3, torch.tensor([0]), float("inf"))), {},
     ValueError, "k contains 4 NaN/Inf"),
]


@pytest.mark.parametrize("fn", [ref.attention_saliency, _public_reference],
                         ids=["reference", "public"])
@pytest.mark.parametrize("case", BAD_QK_CASES, ids=[c[0] for c in BAD_QK_CASES])
def test_attention_saliency_bad_input(fn, case):
    _, make, kwargs, exc, match = case
    q, k = make()
    with pytest.raises(exc, match=match):
        fn(q, k, **kwargs)


@pytest.mark.parametrize("window", [0, -2, 1.5])
def test_public_window_must_be_positive(window):
    q, k = _qk()
    with pytest.raises(ValueError, match="window must be a positive int"):
        _public_reference(q, k, window=window)
    if window != 1.5:
        with pytest.raises(ValueError, match="window must be a positive"):
            ref.attention_saliency(q, k, window=window)


def test_public_bad_backend_and_lse():
    q, k = _qk()
    with pytest.raises(ValueError, match="backend must be one of"):
        ops_attention_saliency(q, k, backend="fast")
    with pytest.raises(ValueError, match=r"lse must have shape \(1, 2, 4\)"):
        _public_reference(q, k, lse=torch.zeros(1, 2, 3))


def _packed(total=6, h=2, h_kv=1):
    g = torch.Generator().manual_seed(6)
    return torch.randn(total, h, 8, generator=g), torch.randn(total, h_kv, 8, generator=g)


@pytest.mark.parametrize("cu, match", [
    (torch.tensor([0, 2, 5]), "end at total tokens"),   # ends short of 6
    (torch.tensor([1, 3, 6]), "start at 0"),
    (torch.tensor([0, 4, 2, 6]), "never decrease"),
    (torch.tensor([0.0, 6.0]), r"integer tensor \[B \+ 1\]"),
    (torch.tensor([6]), r"integer tensor \[B \+ 1\]"),
    (torch.tensor([[0, 6]]), r"integer tensor \[B \+ 1\]"),
])
def test_varlen_bad_cu_seqlens(cu, match):
    q, k = _packed()
    with pytest.raises(ValueError, match=match):
        attention_saliency_varlen(q, k, cu, backend="torch")


def test_varlen_bad_input():
    q, k = _packed()
    cu = torch.tensor([0, 2, 6])
    with pytest.raises(ValueError, match=r"must be \[total_tokens, H, D\]"):
        attention_saliency_varlen(q[None], k[None], cu, backend="torch")
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        attention_saliency_varlen(*_packed(h=3, h_kv=2), cu, backend="torch")
    with pytest.raises(ValueError, match="same number of tokens"):
        attention_saliency_varlen(q, k[:5], cu, backend="torch")
    with pytest.raises(ValueError, match="max_seqlen=3 is below the longest sequence"):
        attention_saliency_varlen(q, k, cu, max_seqlen=3, backend="torch")
    with pytest.raises(ValueError, match="window must be a positive int"):
        attention_saliency_varlen(q, k, cu, window=0, backend="torch")
    with pytest.raises(ValueError, match="q contains 1 NaN"):
        q_nan = q.clone()
        q_nan[3, 1, 2] = float("nan")
        attention_saliency_varlen(q_nan, k, cu, backend="torch")


def test_varlen_reference_equals_padded_reference():
    """Packed sequences of lengths 2 and 4 give the statistics of each sequence run alone."""
    q, k = _packed()
    st = attention_saliency_varlen_naive(q, k, torch.tensor([0, 2, 6]))
    for s, e in ((0, 2), (2, 6)):
        one = ref.attention_saliency(q[s:e].transpose(0, 1)[None], k[s:e].transpose(0, 1)[None])
        torch.testing.assert_close(st.row_entropy[s:e], one.row_entropy[0])
        torch.testing.assert_close(st.col_mass_weighted[s:e], one.col_mass_weighted[0])
        torch.testing.assert_close(st.row_visible[s:e], one.row_visible[0])
        torch.testing.assert_close(st.col_seen[s:e], one.col_seen[0])
        torch.testing.assert_close(st.lse[:, s:e], one.lse[0])
