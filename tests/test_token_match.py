"""match_and_pool (SPEC 3) on every backend against the reference, and the selection it feeds."""
import os

import pytest
import torch

from trim_fast import reference
from trim_fast._ext import HAS_C
from oracles import fast_match, kernel_device, naive_match
from trim_fast.bank import FingerprintBank
from trim_fast.batching import TokenChunk
from trim_fast.ops.token_match import PooledScores, match_and_pool, token_scores
from trim_fast.ops.token_match.naive import pool_naive
from trim_fast.scoring.idf import DocumentFrequency
from trim_fast.selection import combine_tasks, select_top_k

TRITON_OK = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
FAST_BACKENDS = [
    "torch",
    pytest.param("cpu", marks=pytest.mark.skipif(not HAS_C, reason="C++ extension not built")),
    pytest.param("triton", marks=pytest.mark.skipif(not TRITON_OK, reason="no CUDA, no interpreter")),
]
VOCAB = 80
D = 32


def make_bank(seed, d=D, vocab=VOCAB, m=300, meta=None):
    """A bank over the lower half of the vocabulary, so the upper half is never matched."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(m, d, generator=g)
    ids = torch.randint(0, vocab // 2, (m,), generator=g)
    return FingerprintBank.build(hidden, ids, torch.rand(m, generator=g), meta=meta or {})


def make_batch(seed, b=6, n=24, d=D, vocab=VOCAB, dtype=torch.float32):
    """Mixed examples, plus: 0 all matched, 1 fallback only, 2 nothing counted."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, n, d, generator=g).to(dtype)
    ids = torch.randint(0, vocab, (b, n), generator=g)
    counted = torch.rand(b, n, generator=g) < 0.8
    ids[0] = torch.randint(0, vocab // 2, (n,), generator=g)
    ids[1] = torch.randint(vocab // 2, vocab, (n,), generator=g)
    counted[2] = False
    return hidden, ids, counted


def padded_chunk(ids, counted):
    """A [B, N] batch as a TokenChunk of B examples of N tokens."""
    b, n = ids.shape
    return TokenChunk(ids.reshape(-1), counted.reshape(-1), torch.arange(0, b * n + 1, n),
                      torch.zeros(b, dtype=torch.long))


def pool_idf(seed, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    df = DocumentFrequency(vocab)
    df.add_chunk(padded_chunk(torch.randint(0, vocab, (50, 30), generator=g),
                              torch.rand(50, 30, generator=g) < 0.9))
    return df.idf()


def assert_pooled_close(got, want, atol=1e-5):
    assert torch.equal(got.n_scored, want.n_scored)
    assert torch.equal(got.n_matched, want.n_matched)
    for name in ("score", "mean", "max", "coverage"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=atol,
                                   equal_nan=True, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("fallback", ["nearest", "zero", "skip"])
@pytest.mark.parametrize("use_idf", [True, False])
def test_match_and_pool_matches_reference(backend, fallback, use_idf):
    bank = make_bank(0)
    hidden, ids, counted = make_batch(1)
    idf = pool_idf(2) if use_idf else None
    kw = dict(idf=idf, fallback=fallback, fallback_penalty=0.9)
    got = fast_match(hidden, ids, counted, bank, backend=backend, **kw)
    want = naive_match(hidden, ids, counted, bank, **kw)
    assert_pooled_close(got, want)
    # The special examples behave as SPEC 3 says.
    assert float(got.coverage[0]) == 1.0
    assert float(got.score[2]) == float("-inf") and torch.isnan(got.mean[2])
    if fallback == "skip":
        assert float(got.score[1]) == float("-inf") and int(got.n_scored[1]) == 0
    else:
        assert int(got.n_matched[1]) == 0 and int(got.n_scored[1]) == int(counted[1].sum())


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_hidden(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16 and not torch.cuda.is_available():
        pytest.skip("the Triton interpreter mishandles bf16")
    bank = make_bank(3)
    hidden, ids, counted = make_batch(4, dtype=dtype)
    idf = pool_idf(5)
    got = fast_match(hidden, ids, counted, bank, idf=idf, backend=backend)
    # Same input values, upcast: the fp32 path against the float64 oracle.
    want = naive_match(hidden, ids, counted, bank, idf=idf)
    assert_pooled_close(got, want)


@pytest.mark.parametrize("fallback", ["nearest", "zero", "skip"])
@pytest.mark.parametrize("penalty", [0.0, 0.9, 1.0])
def test_token_scores_match_reference(fallback, penalty):
    bank = make_bank(6)
    hidden, ids, counted = make_batch(7)
    got = token_scores(hidden, ids, counted, bank.vectors, bank.row_of_token(), fallback=fallback,
                       fallback_penalty=penalty)
    fp = bank
    for i in range(hidden.shape[0]):
        sel = counted[i]
        if not bool(sel.any()):
            assert not bool(got.scored[i].any())
            continue
        want = reference.token_scores(hidden[i][sel], ids[i][sel], fp, fallback=fallback,
                                      fallback_penalty=penalty)
        assert torch.equal(got.scored[i][sel], want.scored)
        assert torch.equal(got.matched[i][sel], want.matched)
        torch.testing.assert_close(got.score[i][sel], want.score, rtol=0, atol=2e-6, equal_nan=True)
        assert not bool(got.scored[i][~sel].any())


@pytest.mark.parametrize("index_backend", [pytest.param("faiss-cpu", marks=pytest.mark.faiss), "torch"])
def test_faiss_and_matmul_fallback_agree(index_backend):
    bank = make_bank(8)
    hidden, ids, counted = make_batch(9)
    ids[:] = ids % (VOCAB // 2) + VOCAB // 2  # every token takes the nearest fallback
    got = fast_match(hidden, ids, counted, bank, fallback="nearest", backend="torch",
                         index_backend=index_backend)
    want = naive_match(hidden, ids, counted, bank, fallback="nearest")
    assert_pooled_close(got, want)
    assert int(got.n_matched.sum()) == 0


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_kernel_contract_against_naive_twin(backend):
    """Direct kernel inputs, incl. a zero hidden row, which must be reported, not scored."""
    from trim_fast.ops.token_match import resolve_backend
    import importlib

    g = torch.Generator().manual_seed(10)
    b, n, c = 4, 13, 7
    hidden = torch.randn(b, n, D, generator=g)
    vectors = torch.nn.functional.normalize(torch.randn(c, D, generator=g), dim=-1)
    rows = torch.randint(-2, c, (b, n), generator=g)
    rows[3] = -2
    fb = torch.rand(b, n, generator=g) * 0.1
    w = torch.rand(b, n, generator=g) + 1
    hidden[1, 2] = 0
    rows[1, 2] = 0
    name = resolve_backend(backend, kernel_device(backend))
    mod = importlib.import_module(f"trim_fast.ops.token_match.{ {'torch': 'blockwise'}.get(name, name) }")
    pool = getattr(mod, {"torch": "pool_blockwise", "cpu": "pool_cpu", "triton": "pool_triton"}[name])
    dev = kernel_device(name)
    got = [x.cpu() if torch.is_tensor(x) else x
           for x in pool(*(t.to(dev) for t in (hidden, rows, fb, w, vectors)))]
    want = pool_naive(hidden, rows, fb, w, vectors)
    assert got[5] == want[5] == 1
    for x, y in zip(got[:5], want[:5]):
        torch.testing.assert_close(x.double(), y.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("where", ["matched", "fallback"])
def test_nan_hidden_is_a_clear_error(backend, where):
    bank = make_bank(11)
    hidden, ids, counted = make_batch(12)
    j = 3
    counted[0, j] = True
    ids[0, j] = int(bank.classes[0]) if where == "matched" else VOCAB - 1
    hidden[0, j, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        fast_match(hidden, ids, counted, bank, backend=backend)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_uncounted_positions_are_never_read(backend):
    bank = make_bank(13)
    hidden, ids, counted = make_batch(14)
    clean = fast_match(hidden, ids, counted, bank, backend=backend)
    hidden[~counted] = float("nan")  # padding / template positions
    dirty = fast_match(hidden, ids, counted, bank, backend=backend)
    assert_pooled_close(dirty, clean, atol=0)


def test_bad_arguments_are_clear_errors():
    bank = make_bank(15)
    hidden, ids, counted = make_batch(16)
    with pytest.raises(ValueError, match="fallback must be"):
        fast_match(hidden, ids, counted, bank, fallback="closest")
    with pytest.raises(ValueError, match="lambda"):
        fast_match(hidden, ids, counted, bank, fallback_penalty=1.5)
    with pytest.raises(ValueError, match="differs from the bank"):
        fast_match(hidden[..., :-1], ids, counted, bank)
    with pytest.raises(ValueError, match="outside the idf table"):
        fast_match(hidden, ids, counted, bank, idf=torch.ones(VOCAB // 2))
    with pytest.raises(TypeError, match="bool mask"):
        fast_match(hidden, ids, counted.long(), bank)
    with pytest.raises(ValueError, match="backend must be"):
        fast_match(hidden, ids, counted, bank, backend="cuda")


def test_row_table_of_vocabulary_size_equals_shortest():
    bank = make_bank(17)
    hidden, ids, counted = make_batch(18)
    full = match_and_pool(hidden, ids, counted, bank.vectors, bank.row_of_token(VOCAB), backend="torch")
    assert_pooled_close(full, fast_match(hidden, ids, counted, bank, backend="torch"), atol=0)


def _reference_pool_scores(hidden, ids, counted, bank, idf):
    """The oracle end to end: reference token scores and example scores, float64."""
    out = []
    fp = bank
    for i in range(hidden.shape[0]):
        sel = counted[i]
        ts = reference.token_scores(hidden[i][sel], ids[i][sel], fp)
        out.append(reference.example_score(ts, idf[ids[i][sel]]).score)
    return torch.tensor(out, dtype=torch.float64)


def _assert_no_near_ties(scores, k):
    s = scores[torch.isfinite(scores)].sort(descending=True).values
    gaps = (s[:k + 1][:-1] - s[:k + 1][1:]).abs()
    assert float(gaps.min()) > 1e-5, "test data has a near-tie; pick another seed"


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_selected_set_identical_to_reference(backend):
    """Pool of 40 candidates, two tasks, idf from the pool: the fp32 fast path selects the same
    examples, in the same order, as the float64 oracle (data without near-ties)."""
    g = torch.Generator().manual_seed(23)
    banks = [make_bank(20), make_bank(21)]
    hidden = torch.randn(40, 16, D, generator=g)
    ids = torch.randint(0, VOCAB, (40, 16), generator=g)
    counted = torch.rand(40, 16, generator=g) < 0.85
    counted[7] = False  # never selected
    df = DocumentFrequency(VOCAB)
    df.add_chunk(padded_chunk(ids, counted))
    idf = df.idf()
    want_idf = reference.idf(torch.arange(VOCAB), *reference.document_frequency(
        [ids[i][counted[i]] for i in range(40)]))
    assert torch.equal(idf, want_idf)

    fast_tasks = [torch.cat([fast_match(hidden[s:s + 16], ids[s:s + 16], counted[s:s + 16], bank,
                                        idf=idf, backend=backend).score
                             for s in range(0, 40, 16)])
                  for bank in banks]
    ref_tasks = [_reference_pool_scores(hidden, ids, counted, bank, idf) for bank in banks]
    for how in ("max", "mean"):
        fast = combine_tasks(torch.stack(fast_tasks), how)
        ref = reference.combine_tasks(torch.stack(ref_tasks), how)
        _assert_no_near_ties(ref, 40)
        assert fast[7] == float("-inf")
        assert select_top_k(fast, 10).tolist() == reference.select_top_k(ref, 10).tolist()
        everything = select_top_k(fast, 40).tolist()
        assert everything == reference.select_top_k(ref, 40).tolist() and 7 not in everything


@pytest.mark.faiss
def test_prebuilt_index_is_used():
    from trim_fast.ops.nearest import NearestIndex

    bank = make_bank(24)
    hidden, ids, counted = make_batch(25)
    ivf = NearestIndex(bank.vectors, backend="faiss-cpu", kind="ivf", nlist=4, nprobe=4)
    table = bank.row_of_token()
    got = match_and_pool(hidden, ids, counted, bank.vectors, table, backend="torch", nearest=ivf)
    want = naive_match(hidden, ids, counted, bank)
    assert_pooled_close(got, want)  # IVF probing every list is exact
    other = NearestIndex(bank.vectors[:5], backend="torch")
    with pytest.raises(ValueError, match="not built over these vectors"):
        match_and_pool(hidden, ids, counted, bank.vectors, table, backend="torch", nearest=other)


@pytest.mark.skipif(not TRITON_OK, reason="no CUDA, no interpreter")
@pytest.mark.parametrize("num_splits", [2, 3])
def test_triton_token_splits_match_naive(num_splits):
    """Splitting an example's tokens across programs (partials reduced after) changes nothing."""
    from trim_fast.ops.token_match.triton import pool_triton

    g = torch.Generator().manual_seed(26)
    b, n, c = 3, 80, 6
    hidden = torch.randn(b, n, D, generator=g)
    vectors = torch.nn.functional.normalize(torch.randn(c, D, generator=g), dim=-1)
    rows = torch.randint(-2, c, (b, n), generator=g)
    rows[2, 20:] = -2  # a split with nothing scored
    fb = torch.rand(b, n, generator=g) * 0.1
    w = torch.rand(b, n, generator=g) + 1
    dev = kernel_device("triton")
    got = [x.cpu() if torch.is_tensor(x) else x for x in
           pool_triton(*(t.to(dev) for t in (hidden, rows, fb, w, vectors)), num_splits=num_splits)]
    want = pool_naive(hidden, rows, fb, w, vectors)
    assert got[5] == want[5] == 0
    for x, y in zip(got[:5], want[:5]):
        torch.testing.assert_close(x.double(), y.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fallback", ["nearest", "skip"])
def test_cuda_matches_reference(backend, dtype, fallback):
    bank = make_bank(27)
    hidden, ids, counted = make_batch(28, dtype=dtype)
    idf = pool_idf(29)
    got = fast_match(hidden.cuda(), ids.cuda(), counted.cuda(), bank, idf=idf.cuda(),
                     fallback=fallback, backend=backend)
    want = naive_match(hidden, ids, counted, bank, idf=idf, fallback=fallback)
    assert got.score.is_cuda
    assert_pooled_close(PooledScores(*(getattr(got, f).cpu() for f in PooledScores.__dataclass_fields__)),
                        want)


@pytest.mark.gpu
def test_cuda_index_agrees_with_exact_search():
    from trim_fast.ops.nearest import NearestIndex, faiss_has_gpu

    g = torch.Generator().manual_seed(30)
    vectors = torch.nn.functional.normalize(torch.randn(500, 64, generator=g), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(300, 64, generator=g), dim=-1)
    sims = queries.double() @ vectors.double().T  # the exact oracle, no faiss needed
    want_best, want_rows = sims.max(dim=1)
    want_best = want_best.float()
    backends = ["torch"] + (["faiss-gpu"] if faiss_has_gpu() else [])
    for name in backends:
        best, rows = NearestIndex(vectors.cuda(), backend=name).search(queries.cuda())
        assert best.is_cuda and rows.is_cuda
        torch.testing.assert_close(best.cpu(), want_best, rtol=0, atol=1e-5)
        assert float((rows.cpu() == want_rows).float().mean()) > 0.99
