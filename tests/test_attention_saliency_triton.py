"""backend="triton" against the float64 reference (SPEC section 1 raw statistics).

On a machine without CUDA the kernels run under the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), so shapes stay small. Tolerance is flash-attention's rule, per statistic:
max|fast - ref64| <= 2 * max|ref_in_dtype - ref64| + floor, where ref_in_dtype is the reference
computed in the input dtype (``upcast=False``) and floor = 1e-5 * max(1, max|ref64|).
"""
from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

from trim_fast import reference  # noqa: E402
from trim_fast.ops.attention_saliency.naive import (  # noqa: E402
    attention_saliency_naive,
    attention_saliency_varlen_naive,
)
from trim_fast.ops.attention_saliency import (  # noqa: E402
    attention_saliency,
    attention_saliency_varlen,
)

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

DEVICE = "cuda" if HAS_CUDA else "cpu"
FLOOR_REL = 1e-5
STAT_NAMES = ("row_entropy", "col_mass", "col_mass_weighted", "lse")


def _backend():
    from trim_fast.ops.attention_saliency import triton as triton_backend

    return triton_backend


def _dtypes():
    out = [torch.float32, torch.float16]
    if HAS_CUDA:  # the interpreter's bf16 tl.dot is wrong: bf16 only on a real GPU
        out.append(torch.bfloat16)
    return out


def _ref_padded(q, k, *, causal, scale, seq_lens, window, upcast):
    st = reference.attention_saliency(q.cpu(), k.cpu(), causal=causal, scale=scale,
                                      seq_lens=seq_lens.cpu(), window=window, upcast=upcast)
    return st.row_entropy, st.col_mass, st.col_mass_weighted, st.lse.float()


def _ref_varlen(q, k, cu_seqlens, *, causal, scale, window, upcast):
    """Per packed sequence, the padded reference; lse as ``[H, total]``."""
    h = q.shape[1]
    outs = ([], [], [], [])
    cu = cu_seqlens.tolist()
    for s, e in zip(cu[:-1], cu[1:]):
        if e == s:
            continue
        qs = q[s:e].cpu().transpose(0, 1)[None]
        ks = k[s:e].cpu().transpose(0, 1)[None]
        r = _ref_padded(qs, ks, causal=causal, scale=scale, seq_lens=torch.tensor([e - s]),
                        window=window, upcast=upcast)
        for o, v in zip(outs[:3], r[:3]):
            o.append(v[0])
        outs[3].append(r[3][0])
    if not outs[0]:
        empty = torch.zeros(0)
        return empty, empty, empty, torch.zeros(h, 0)
    return torch.cat(outs[0]), torch.cat(outs[1]), torch.cat(outs[2]), torch.cat(outs[3], dim=1)


def _assert_flash_rule(fast, ref64, ref_dtype, label):
    for name, f, r, rd in zip(STAT_NAMES, fast, ref64, ref_dtype):
        f = f.detach().cpu().float()
        r = r.cpu().float()
        rd = rd.cpu().float()
        assert f.shape == r.shape, f"{label} {name}: shape {tuple(f.shape)} vs {tuple(r.shape)}"
        finite = torch.isfinite(r)
        assert torch.equal(torch.isfinite(f), finite), f"{label} {name}: finite pattern differs"
        if not finite.any():
            continue
        err_fast = (f[finite] - r[finite]).abs().max().item()
        err_dtype = (rd[finite] - r[finite]).abs().max().item()
        floor = FLOOR_REL * max(1.0, r[finite].abs().max().item())
        assert err_fast <= 2 * err_dtype + floor, (
            f"{label} {name}: |fast - ref64| = {err_fast:.3g} > 2 * |ref_in_dtype - ref64| "
            f"({err_dtype:.3g}) + floor {floor:.3g}")


def _assert_padding(stats, seq_lens, label):
    """Padding positions are exactly 0 (lse: -inf)."""
    n = stats[0].shape[-1]
    pad = torch.arange(n)[None, :] >= seq_lens.cpu()[:, None]  # [B, N]
    for name, x in zip(STAT_NAMES[:3], stats[:3]):
        assert bool((x.cpu()[pad] == 0).all()), f"{label} {name}: padding is not 0"
    lse = stats[3].cpu()
    assert bool(torch.isneginf(lse.permute(1, 0, 2)[:, pad]).all()), f"{label} lse: padding is not -inf"


def _inputs(shape_q, heads_kv, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    shape_k = list(shape_q)
    shape_k[-3 if len(shape_q) == 4 else -2] = heads_kv
    q = torch.randn(*shape_q, generator=g) * 1.5
    k = torch.randn(*shape_k, generator=g) * 1.5
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype)


# (causal, heads, kv_heads, head_dim, n, seq_lens, window)
PADDED_CASES = [
    pytest.param(True, 4, 4, 64, 17, [17, 1], None, id="causal-mha-d64-n17-len1"),
    pytest.param(True, 4, 2, 80, 113, [113, 57], None, id="causal-gqa-d80-n113"),
    pytest.param(True, 4, 1, 96, 33, [33, 20], 8, id="causal-mqa-d96-window8"),
    pytest.param(False, 2, 2, 64, 17, [17, 5], None, id="bidir-mha-d64-n17"),
    pytest.param(False, 4, 1, 80, 40, [40, 31], 6, id="bidir-mqa-d80-window6"),
    pytest.param(True, 2, 1, 128, 24, [24, 0], None, id="causal-mqa-d128-len0"),
    pytest.param(False, 1, 1, 256, 20, [20], 30, id="bidir-d256-window-wider-than-n"),
]


@pytest.mark.parametrize("dtype", _dtypes(), ids=str)
@pytest.mark.parametrize("lse_given", [False, True], ids=["online", "lse-given"])
@pytest.mark.parametrize("causal,heads,kv_heads,head_dim,n,lens,window", PADDED_CASES)
def test_padded_matches_reference(causal, heads, kv_heads, head_dim, n, lens, window, lse_given,
                                  dtype):
    q, k = _inputs((len(lens), heads, n, head_dim), kv_heads, dtype, seed=n + head_dim)
    seq_lens = torch.tensor(lens, device=DEVICE)
    kw = dict(causal=causal, scale=head_dim ** -0.5, seq_lens=seq_lens, window=window)
    ref64 = _ref_padded(q, k, upcast=True, **kw)
    ref_dtype = _ref_padded(q, k, upcast=False, **kw)
    lse = ref64[3].to(DEVICE) if lse_given else None
    fast = _backend().saliency_padded(q, k, lse=lse, **kw)
    label = f"padded {dtype}"
    _assert_flash_rule(fast, ref64, ref_dtype, label)
    _assert_padding(fast, seq_lens, label)


# (causal, heads, kv_heads, head_dim, lengths, window); lengths include 0 and 1
VARLEN_CASES = [
    pytest.param(True, 4, 2, 80, [1, 17, 0, 113], None, id="causal-gqa-d80-1-17-0-113"),
    pytest.param(False, 2, 1, 64, [17, 13], 7, id="bidir-mqa-d64-window7"),
    pytest.param(True, 2, 2, 96, [5, 40, 1], 9, id="causal-mha-d96-window9"),
]


@pytest.mark.parametrize("dtype", _dtypes(), ids=str)
@pytest.mark.parametrize("lse_given", [False, True], ids=["online", "lse-given"])
@pytest.mark.parametrize("causal,heads,kv_heads,head_dim,lengths,window", VARLEN_CASES)
def test_varlen_matches_reference(causal, heads, kv_heads, head_dim, lengths, window, lse_given,
                                  dtype):
    total = sum(lengths)
    q, k = _inputs((total, heads, head_dim), kv_heads, dtype, seed=total)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), device=DEVICE)
    kw = dict(causal=causal, scale=head_dim ** -0.5, window=window)
    ref64 = _ref_varlen(q, k, cu.cpu(), upcast=True, **kw)
    ref_dtype = _ref_varlen(q, k, cu.cpu(), upcast=False, **kw)
    lse = ref64[3].to(DEVICE) if lse_given else None
    fast = _backend().saliency_varlen(q, k, cu, max_seqlen=max(lengths), lse=lse, **kw)
    _assert_flash_rule(fast, ref64, ref_dtype, f"varlen {dtype}")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_padded_and_varlen_layouts_agree(causal):
    """The same sequences, padded or packed, give the same statistics (one kernel core)."""
    lengths = [19, 3, 30]
    q, k = _inputs((sum(lengths), 2, 64), 1, torch.float32, seed=3)
    cu = torch.tensor([0, 19, 22, 52], device=DEVICE)
    n = max(lengths)
    qp = q.new_zeros(len(lengths), 2, n, 64)
    kp = k.new_zeros(len(lengths), 1, n, 64)
    for b, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        qp[b, :, : e - s] = q[s:e].transpose(0, 1)
        kp[b, :, : e - s] = k[s:e].transpose(0, 1)
    seq_lens = torch.tensor(lengths, device=DEVICE)
    padded = _backend().saliency_padded(qp, kp, causal=causal, scale=0.125, seq_lens=seq_lens,
                                        window=None, lse=None)
    packed = _backend().saliency_varlen(q, k, cu, max_seqlen=n, causal=causal, scale=0.125,
                                        window=None, lse=None)
    valid = torch.arange(n, device=DEVICE)[None, :] < seq_lens[:, None]
    for name, p, v in zip(STAT_NAMES[:3], padded[:3], packed[:3]):
        torch.testing.assert_close(p[valid], v, rtol=1e-6, atol=1e-6, msg=name)
    torch.testing.assert_close(padded[3].permute(1, 0, 2)[:, valid], packed[3], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_public_entry_dispatches_to_triton(causal):
    """attention_saliency / _varlen with backend="triton" against the naive twins."""
    q, k = _inputs((1, 2, 29, 64), 1, torch.float32, seed=11)
    a = attention_saliency(q, k, causal=causal, backend="triton")
    b = attention_saliency_naive(q.cpu(), k.cpu(), causal=causal)
    ref_dtype = _ref_padded(q, k, causal=causal, scale=None, seq_lens=torch.tensor([29]),
                            window=None, upcast=False)
    _assert_flash_rule([getattr(a, s) for s in STAT_NAMES], [getattr(b, s) for s in STAT_NAMES],
                       ref_dtype, "public padded")
    assert torch.equal(a.row_visible.cpu(), b.row_visible) and a.num_heads == 2

    qv, kv = q[0].transpose(0, 1).contiguous(), k[0].transpose(0, 1).contiguous()
    cu = torch.tensor([0, 10, 29], device=DEVICE)
    av = attention_saliency_varlen(qv, kv, cu, causal=causal, backend="triton")
    bv = attention_saliency_varlen_naive(qv.cpu(), kv.cpu(), cu.cpu(), causal=causal)
    rd = _ref_varlen(qv, kv, cu.cpu(), causal=causal, scale=None, window=None, upcast=False)
    _assert_flash_rule([getattr(av, s) for s in STAT_NAMES], [getattr(bv, s) for s in STAT_NAMES],
                       rd, "public varlen")


def test_strided_inputs():
    """q/k as HF produces them (a transposed view, last dim contiguous) need no copy to be right."""
    q_bnhd = torch.randn(1, 21, 2, 64).to(DEVICE)
    k_bnhd = torch.randn(1, 21, 2, 64).to(DEVICE)
    q, k = q_bnhd.transpose(1, 2), k_bnhd.transpose(1, 2)
    kw = dict(causal=True, scale=0.125, seq_lens=torch.tensor([21], device=DEVICE), window=None)
    fast = _backend().saliency_padded(q, k, lse=None, **kw)
    contiguous = _backend().saliency_padded(q.contiguous(), k.contiguous(), lse=None, **kw)
    for a, b in zip(fast, contiguous):
        assert torch.equal(a, b)


def test_rejects_unsupported_inputs():
    q = torch.randn(1, 1, 4, 16, dtype=torch.float64, device=DEVICE)
    lens = torch.tensor([4], device=DEVICE)
    with pytest.raises(TypeError, match="float64"):
        _backend().saliency_padded(q, q, causal=True, scale=1.0, seq_lens=lens, window=None, lse=None)
    big = torch.randn(1, 1, 4, 320, device=DEVICE)
    with pytest.raises(ValueError, match="head dims up to 256"):
        _backend().saliency_padded(big, big, causal=True, scale=1.0, seq_lens=lens, window=None,
                                   lse=None)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("lse_given", [False, True], ids=["online", "lse-given"])
def test_long_sequence_gpu(dtype, lse_given):
    """N = 1023 with GPU-sized tiles (too slow for the interpreter)."""
    q, k = _inputs((1, 4, 1023, 128), 2, dtype, seed=1023)
    kw = dict(causal=True, scale=128 ** -0.5, seq_lens=torch.tensor([1023], device=DEVICE),
              window=None)
    ref64 = _ref_padded(q, k, upcast=True, **kw)
    ref_dtype = _ref_padded(q, k, upcast=False, **kw)
    fast = _backend().saliency_padded(q, k, lse=ref64[3].to(DEVICE) if lse_given else None, **kw)
    _assert_flash_rule(fast, ref64, ref_dtype, f"N=1023 {dtype}")


@pytest.mark.gpu
def test_bit_reproducible_gpu():
    """Same inputs, same bits: per-head buffers summed in torch, and the lse-given row entropy's
    atomics are integer (fixed point), so program order cannot change the result."""
    q, k = _inputs((2, 8, 1023, 128), 2, torch.bfloat16, seed=5)
    kw = dict(causal=True, scale=128 ** -0.5, seq_lens=torch.tensor([1023, 600], device=DEVICE),
              window=None)
    first = _backend().saliency_padded(q, k, lse=None, **kw)
    for lse in (None, first[3]):
        runs = [_backend().saliency_padded(q, k, lse=lse, **kw) for _ in range(3)]
        for r in runs[1:]:
            for a, b in zip(runs[0], r):
                assert torch.equal(a, b)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_tile_boundaries(causal):
    """Windows and lengths on and around 16-wide tile edges: the loops split into masked head,
    unmasked body and masked tail, and each split point must be exact."""
    tb = _backend()
    tiles = tb.BlockConfig(16, 16, 16, 16, 1, 1)
    n = 49
    lens = [49, 33]
    q, k = _inputs((len(lens), 1, n, 16), 1, torch.float32, seed=7)
    seq_lens = torch.tensor(lens, device=DEVICE)
    # tile starts follow i0 - window + 1: windows = 15, 0, 1 (mod 16) put a tile on each edge
    for window in (None, 1, 15, 16, 17, 31, 33):
        kw = dict(causal=causal, scale=0.25, seq_lens=seq_lens, window=window)
        ref64 = _ref_padded(q, k, upcast=True, **kw)
        ref32 = _ref_padded(q, k, upcast=False, **kw)
        for lse in (None, ref64[3].to(DEVICE)) if window in (None, 15) else (None,):
            fast = tb.saliency_padded(q, k, lse=lse, config=tiles, **kw)
            _assert_flash_rule(fast, ref64, ref32, f"window={window} lse={'given' if lse is not None else 'no'}")


def test_hopper_tiles_only_for_the_measured_shape(monkeypatch):
    """The H200 sweep's tiles apply on compute capability 9.x at 16-bit D=128 only."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    tb = _backend()
    cfg, swept = tb.block_config, tb.BlockConfig(128, 64, 32, 128, 4, 3)
    assert cfg(128, torch.bfloat16, 4096, (9, 0)) == cfg(128, torch.float16, 64, (9, 0)) == swept
    assert cfg(128, torch.bfloat16, 4096, (8, 0)) != swept
    assert cfg(128, torch.bfloat16, 4096, None) == cfg(128, torch.bfloat16, 4096, (8, 0))
    assert cfg(64, torch.bfloat16, 4096, (9, 0)) == cfg(64, torch.bfloat16, 4096, (8, 0))
    assert cfg(128, torch.float32, 4096, (9, 0)) == cfg(128, torch.float32, 4096, (8, 0))
