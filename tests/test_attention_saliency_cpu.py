"""CPU paths of ``attention_saliency`` (``backend="cpu"``: C++; ``"torch"``: blockwise PyTorch)
against the float64 reference that materialises attention.

Tolerance (flash-attention's rule): ``|fast - ref64| <= 2 |ref_dtype - ref64| + floor``, where
``ref_dtype`` is the reference run in the input dtype (``upcast=False``).
"""
from __future__ import annotations

import pytest
import torch

from trim_fast import reference
from trim_fast._ext import HAS_C, _C
from trim_fast.ops.attention_saliency import attention_saliency, attention_saliency_varlen
from trim_fast.saliency import token_saliency

FAST_BACKENDS = [
    pytest.param("cpu", marks=pytest.mark.skipif(not HAS_C, reason="trim_fast._C not built")),
    "torch",
]
HEADS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
STAT_FIELDS = ("row_entropy", "col_mass", "col_mass_weighted")


def make_qk(b, h, h_kv, n, d, dtype, *, seed=0, spread=2.0):
    """Random q/k with a spread of logits, so that rows range from flat to sharp."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=gen) * spread
    k = torch.randn(b, h_kv, n, d, generator=gen)
    return q.to(dtype), k.to(dtype)


def assert_flash_close(name, fast, ref64, ref_dtype, *, floor_abs=5e-6, floor_rel=2e-6):
    fast, ref64, ref_dtype = fast.double(), ref64.double(), ref_dtype.double()
    assert fast.shape == ref64.shape, f"{name}: shape {tuple(fast.shape)} != {tuple(ref64.shape)}"
    finite = torch.isfinite(ref64)
    assert torch.equal(torch.isfinite(fast), finite), f"{name}: finite pattern differs"
    assert torch.equal(fast[~finite], ref64[~finite]), f"{name}: non-finite values differ"
    err = (fast - ref64)[finite].abs()
    bound = (2 * (ref_dtype - ref64)[finite].abs() + floor_abs + floor_rel * ref64[finite].abs())
    excess = err - bound
    assert bool((excess <= 0).all()), (
        f"{name}: error {float(err.max()):.3g} exceeds the bound by {float(excess.max()):.3g}")


def check_stats(fast, ref64, ref_dtype, *, check_lse=True):
    for field in STAT_FIELDS:
        assert getattr(fast, field).dtype == torch.float32, f"{field} is not fp32"
        assert_flash_close(field, getattr(fast, field), getattr(ref64, field), getattr(ref_dtype, field))
    if check_lse:
        assert fast.lse.dtype == torch.float32
        assert_flash_close("lse", fast.lse, ref64.lse, ref_dtype.lse)


def references(q, k, **kw):
    return (reference.attention_saliency(q, k, **kw),
            reference.attention_saliency(q, k, upcast=False, **kw))


# ------------------------------------------------------------------------------------------
# padded layout
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_padded_matches_reference(backend, causal, heads, dtype):
    h, h_kv = HEADS[heads]
    q, k = make_qk(4, h, h_kv, 113, 16, dtype, seed=1)
    seq_lens = torch.tensor([113, 0, 1, 70])  # full, empty, one token, right-padded
    ref64, ref_dt = references(q, k, causal=causal, seq_lens=seq_lens)
    fast = attention_saliency(q, k, causal=causal, seq_lens=seq_lens, backend=backend)
    check_stats(fast, ref64, ref_dt)
    pad = torch.arange(113)[None, :] >= seq_lens[:, None]
    for field in STAT_FIELDS:
        assert bool((getattr(fast, field)[pad] == 0).all()), f"{field} is not 0 at padding"
    assert bool(torch.isneginf(fast.lse.transpose(0, 1)[:, pad]).all()), "lse is not -inf at padding"


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n", [1, 17, 113])
def test_lengths(backend, causal, n):
    q, k = make_qk(2, 4, 2, n, 32, torch.float32, seed=n)
    ref64, ref_dt = references(q, k, causal=causal)
    check_stats(attention_saliency(q, k, causal=causal, backend=backend), ref64, ref_dt)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
def test_sharp_rows(backend, causal):
    """Logits in the thousands: one-hot rows, exp far out of range off the mask."""
    q, k = make_qk(2, 4, 1, 70, 8, torch.float32, seed=8, spread=60.0)
    seq_lens = torch.tensor([70, 33])
    ref64, ref_dt = references(q, k, causal=causal, seq_lens=seq_lens, window=20)
    fast = attention_saliency(q, k, causal=causal, seq_lens=seq_lens, window=20, backend=backend)
    check_stats(fast, ref64, ref_dt)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_long_sequence(backend):
    """Many query/key blocks (64 in C++, 128 in torch), the causal skipping across them."""
    q, k = make_qk(1, 2, 2, 1023, 16, torch.float32, seed=3)
    ref64, ref_dt = references(q, k, causal=True)
    check_stats(attention_saliency(q, k, causal=True, backend=backend), ref64, ref_dt)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [1, 5, 70])
def test_sliding_window(backend, causal, window):
    q, k = make_qk(2, 4, 2, 150, 16, torch.float32, seed=window)
    seq_lens = torch.tensor([150, 97])
    ref64, ref_dt = references(q, k, causal=causal, seq_lens=seq_lens, window=window)
    fast = attention_saliency(q, k, causal=causal, seq_lens=seq_lens, window=window, backend=backend)
    check_stats(fast, ref64, ref_dt)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, 9])
def test_given_lse(backend, causal, window):
    """With the caller's lse the first pass is skipped; the statistics must not change."""
    q, k = make_qk(3, 4, 2, 90, 16, torch.float32, seed=7)
    seq_lens = torch.tensor([90, 1, 41])
    kw = dict(causal=causal, seq_lens=seq_lens, window=window)
    ref64, ref_dt = references(q, k, **kw)
    own = attention_saliency(q, k, backend=backend, **kw)
    given = attention_saliency(q, k, lse=ref64.lse, backend=backend, **kw)
    check_stats(given, ref64, ref_dt)
    for field in STAT_FIELDS:
        torch.testing.assert_close(getattr(given, field), getattr(own, field), rtol=1e-5, atol=1e-5)
    valid = torch.isfinite(ref64.lse)
    assert torch.equal(given.lse[valid], ref64.lse[valid]), "the given lse is not passed through"
    assert bool(torch.isneginf(given.lse[~valid]).all())


@pytest.mark.skipif(not HAS_C, reason="trim_fast._C not built")
def test_cpu_is_deterministic():
    q, k = make_qk(2, 4, 1, 200, 16, torch.float32, seed=11)
    a = attention_saliency(q, k, backend="cpu")
    b = attention_saliency(q, k, backend="cpu")
    for field in STAT_FIELDS + ("lse",):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_custom_scale(backend):
    q, k = make_qk(1, 2, 1, 40, 16, torch.float32, seed=5)
    ref64, ref_dt = references(q, k, causal=True, scale=0.7)
    check_stats(attention_saliency(q, k, causal=True, scale=0.7, backend=backend), ref64, ref_dt)


# ------------------------------------------------------------------------------------------
# packed varlen layout
# ------------------------------------------------------------------------------------------


def pack(q, k, lens):
    """Padded [B, H, N, D] -> packed [total, H, D] keeping the first ``lens[b]`` tokens."""
    q_parts = [q[b, :, :n].transpose(0, 1) for b, n in enumerate(lens)]
    k_parts = [k[b, :, :n].transpose(0, 1) for b, n in enumerate(lens)]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)
    return torch.cat(q_parts), torch.cat(k_parts), cu


def unpack_stats(st, lens):
    """Reference stats on the padded batch -> packed ``[total]`` stats and ``lse [H, total]``."""
    out = {f: torch.cat([getattr(st, f)[b, :n] for b, n in enumerate(lens)]) for f in STAT_FIELDS}
    out["lse"] = torch.cat([st.lse[b, :, :n] for b, n in enumerate(lens)], dim=1)
    return type("Packed", (), out)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("window", [None, 6])
def test_varlen_matches_reference(backend, causal, heads, window):
    h, h_kv = HEADS[heads]
    lens = [17, 0, 1, 113, 40]
    q, k = make_qk(len(lens), h, h_kv, max(lens), 16, torch.float32, seed=2)
    kw = dict(causal=causal, window=window)
    seq_lens = torch.tensor(lens)
    ref64 = unpack_stats(reference.attention_saliency(q, k, seq_lens=seq_lens, **kw), lens)
    ref_dt = unpack_stats(reference.attention_saliency(q, k, seq_lens=seq_lens, upcast=False, **kw), lens)
    qp, kp, cu = pack(q, k, lens)
    fast = attention_saliency_varlen(qp, kp, cu, backend=backend, **kw)
    check_stats(fast, ref64, ref_dt)
    given = attention_saliency_varlen(qp, kp, cu, lse=ref64.lse, backend=backend, **kw)
    check_stats(given, ref64, ref_dt)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_varlen_low_precision(backend, dtype):
    lens = [30, 64, 5]
    q, k = make_qk(len(lens), 4, 2, max(lens), 16, dtype, seed=4)
    seq_lens = torch.tensor(lens)
    ref64 = unpack_stats(reference.attention_saliency(q, k, seq_lens=seq_lens), lens)
    ref_dt = unpack_stats(reference.attention_saliency(q, k, seq_lens=seq_lens, upcast=False), lens)
    qp, kp, cu = pack(q, k, lens)
    check_stats(attention_saliency_varlen(qp, kp, cu, backend=backend), ref64, ref_dt)


# ------------------------------------------------------------------------------------------
# alpha end to end
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
def test_token_saliency_from_stats_matches_probs(backend, causal):
    """alpha from the kernel's raw statistics = SPEC 1 computed literally from the probabilities."""
    seq_lens = torch.tensor([60, 1, 33])
    layers = [make_qk(3, 4, 2, 60, 16, torch.float32, seed=s) for s in (20, 21)]
    visible = reference.visibility_mask(60, causal=causal, seq_lens=seq_lens, batch=3)
    probs = [reference.attention_probs(reference.attention_scores(q, k, visible)) for q, k in layers]
    want = reference.token_saliency_from_probs(probs, visible)
    stats = [attention_saliency(q, k, causal=causal, seq_lens=seq_lens, backend=backend)
             for q, k in layers]
    got = token_saliency(stats)
    for part in ("alpha", "row", "col"):
        torch.testing.assert_close(getattr(got, part), getattr(want, part), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# bad input: every error names the problem
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_bad_inputs(backend):
    q, k = make_qk(2, 4, 2, 10, 8, torch.float32)
    call = lambda *a, **kw: attention_saliency(*a, backend=backend, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        call(q, k[:, :1].expand(2, 3, 10, 8).contiguous())
    with pytest.raises(ValueError, match="share batch and sequence length"):
        call(q, k[:, :, :9])
    with pytest.raises(ValueError, match="head dims differ"):
        call(q, k[..., :4])
    with pytest.raises(TypeError, match="share a dtype"):
        call(q, k.half())
    with pytest.raises(ValueError, match="seq_lens out of range"):
        call(q, k, seq_lens=torch.tensor([10, 11]))
    with pytest.raises(ValueError, match="seq_lens out of range"):
        call(q, k, seq_lens=torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match=r"seq_lens must be an integer tensor of shape \[2\]"):
        call(q, k, seq_lens=torch.tensor([3]))
    bad_q = q.clone()
    bad_q[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="q contains 1 NaN/Inf"):
        call(bad_q, k)
    bad_k = k.clone()
    bad_k[1, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="k contains 1 NaN/Inf"):
        call(q, bad_k)
    with pytest.raises(ValueError, match=r"lse must have shape \(2, 4, 10\)"):
        call(q, k, lse=torch.zeros(2, 4, 9))
    lse = reference.attention_saliency(q, k).lse.clone()
    lse[0, 0, 3] = float("-inf")
    with pytest.raises(ValueError, match="lse must be finite at every non-padding position"):
        call(q, k, lse=lse)
    with pytest.raises(ValueError, match="window must be a positive int"):
        call(q, k, window=0)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_bad_varlen_inputs(backend):
    q = torch.randn(10, 4, 8)
    k = torch.randn(10, 2, 8)
    call = lambda *a, **kw: attention_saliency_varlen(*a, backend=backend, **kw)  # noqa: E731
    for cu in ([0, 4, 9], [1, 4, 10], [0, 6, 4, 10]):
        with pytest.raises(ValueError, match="cu_seqlens must start at 0, never decrease"):
            call(q, k, torch.tensor(cu, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens must be an integer tensor"):
        call(q, k, torch.tensor([0.0, 10.0]))
    with pytest.raises(ValueError, match="max_seqlen=3 is below the longest sequence"):
        call(q, k, torch.tensor([0, 4, 10], dtype=torch.int32), max_seqlen=3)
    with pytest.raises(ValueError, match="must have the same number of tokens"):
        call(q, k[:9], torch.tensor([0, 10], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"lse must have shape \(4, 10\)"):
        call(q, k, torch.tensor([0, 10], dtype=torch.int32), lse=torch.zeros(10, 4))


@pytest.mark.skipif(not HAS_C, reason="trim_fast._C not built")
def test_extension_checks_its_own_arguments():
    """The binding validates too (it can be called without the Python entry)."""
    q = torch.randn(1, 2, 5, 4).numpy()
    k = torch.randn(1, 2, 5, 4).numpy()
    with pytest.raises(ValueError, match=r"seq_lens\[0\] = 6 is out of range"):
        _C.attention_saliency_padded(q, k, torch.tensor([6]).numpy(), True, 0.5, 0, None, 1)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        _C.attention_saliency_padded(q, k[:, :1].repeat(3, 1), torch.tensor([5]).numpy(),
                                     True, 0.5, 0, None, 1)
    qp, kp = q[0].transpose(1, 0, 2).copy(), k[0].transpose(1, 0, 2).copy()
    with pytest.raises(ValueError, match="cu_seqlens must never decrease"):
        _C.attention_saliency_varlen(qp, kp, torch.tensor([0, 6, 5]).numpy(), True, 0.5, 0, None, 1)
    with pytest.raises(ValueError, match=r"lse has shape \[3, 5\], expected \[2, 5\]"):
        _C.attention_saliency_varlen(qp, kp, torch.tensor([0, 5]).numpy(), True, 0.5, 0,
                                     torch.zeros(3, 5).numpy(), 1)


@pytest.mark.skipif(not HAS_C, reason="trim_fast._C not built")
@pytest.mark.parametrize("causal", [True, False])
def test_cpu_baseline_isa_path(causal):
    """The kernel has an AVX2 build and a baseline build, chosen at run time: test both."""
    q, k = make_qk(2, 4, 2, 130, 24, torch.float32, seed=9)
    seq_lens = torch.tensor([130, 66])
    ref64, ref_dt = references(q, k, causal=causal, seq_lens=seq_lens, window=50)
    was, _ = _C._attention_saliency_allow_avx2(False)
    try:
        assert _C._attention_saliency_allow_avx2(False)[1] is False
        fast = attention_saliency(q, k, causal=causal, seq_lens=seq_lens, window=50, backend="cpu")
    finally:
        _C._attention_saliency_allow_avx2(was)
    check_stats(fast, ref64, ref_dt)
