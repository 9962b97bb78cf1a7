"""FingerprintBank and the nearest-fingerprint index against the reference (SPEC 2)."""
import json
import os
import pickle

import pytest
import torch

from trim_fast import reference
from trim_fast.bank import FingerprintAccumulator, FingerprintBank
from trim_fast.ops.nearest import NearestIndex, torch_nearest

META = {"model_id": "tiny-llama", "tokenizer_hash": "abc123", "L": 6, "weights": [0.5, 0.5],
        "scope": "all"}


def target_tokens(seed, m=400, d=24, vocab=60, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(m, d, generator=g) * 3).to(dtype)
    ids = torch.randint(0, vocab, (m,), generator=g)
    alpha = torch.rand(m, generator=g)
    return hidden, ids, alpha


def assert_bank_matches(bank, ref):
    assert torch.equal(bank.classes, ref.classes)
    assert torch.equal(bank.counts, ref.counts)
    # Both sum in float64 (in different orders) and round to fp32: at most an ulp apart.
    torch.testing.assert_close(bank.vectors, ref.vectors, rtol=0, atol=1e-6)
    torch.testing.assert_close(bank.mass, ref.mass, rtol=1e-6, atol=1e-6)
    assert bank.vectors.dtype == torch.float32


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_build_matches_reference(seed, dtype):
    hidden, ids, alpha = target_tokens(seed, dtype=dtype)
    bank = FingerprintBank.build(hidden, ids, alpha, meta=META)
    assert_bank_matches(bank, reference.build_fingerprints(hidden, ids, alpha))
    assert bank.meta["model_id"] == "tiny-llama"
    norms = bank.vectors.double().norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-6)


def test_streamed_batches_equal_one_build():
    hidden, ids, alpha = target_tokens(3, m=500)
    acc = FingerprintAccumulator(hidden.shape[1])
    for start in (0, 170, 171, 333):  # uneven batches, one of a single token
        stop = {0: 170, 170: 171, 171: 333, 333: 500}[start]
        acc.add(hidden[start:stop], ids[start:stop], alpha[start:stop])
    assert acc.num_tokens == 500
    streamed = acc.finish(META)
    assert_bank_matches(streamed, reference.build_fingerprints(hidden, ids, alpha))


def test_cancelling_and_zero_mass_classes_are_dropped():
    d = 8
    g = torch.Generator().manual_seed(5)
    v = torch.randn(d, generator=g)
    hidden = torch.stack([v, -v, torch.randn(d, generator=g), torch.randn(d, generator=g),
                          torch.randn(d, generator=g)])
    ids = torch.tensor([7, 7, 3, 9, 9])
    alpha = torch.tensor([0.4, 0.4, 0.7, 0.0, 0.0])  # class 7 cancels, class 9 has no mass
    bank = FingerprintBank.build(hidden, ids, alpha, meta={})
    ref = reference.build_fingerprints(hidden, ids, alpha)
    assert bank.classes.tolist() == ref.classes.tolist() == [3]
    assert_bank_matches(bank, ref)


def test_row_of_token():
    hidden, ids, alpha = target_tokens(4, vocab=30)
    bank = FingerprintBank.build(hidden, ids, alpha, meta={})
    table = bank.row_of_token(40)
    assert table.shape == (40,)
    for t in range(40):
        hits = (bank.classes == t).nonzero()
        assert int(table[t]) == (int(hits[0, 0]) if hits.numel() else -1)
    with pytest.raises(ValueError, match="vocab_size"):
        bank.row_of_token(int(bank.classes.max()))


@pytest.mark.parametrize("bad, match", [
    ("nan", "NaN"), ("zero_row", "zero norm"), ("empty", "no counted tokens"),
    ("all_zero_alpha", "no fingerprint"), ("shape", "expected hidden"), ("neg_id", ">= 0"),
])
def test_build_rejects_bad_input(bad, match):
    hidden, ids, alpha = target_tokens(6, m=20)
    if bad == "nan":
        hidden[3, 2] = float("nan")
    elif bad == "zero_row":
        hidden[5] = 0
    elif bad == "empty":
        hidden, ids, alpha = hidden[:0], ids[:0], alpha[:0]
    elif bad == "all_zero_alpha":
        alpha = torch.zeros_like(alpha)
    elif bad == "shape":
        ids = ids[:-1]
    elif bad == "neg_id":
        ids[0] = -1
    with pytest.raises(ValueError, match=match):
        FingerprintBank.build(hidden, ids, alpha, meta={})


def test_save_load_roundtrip(tmp_path):
    hidden, ids, alpha = target_tokens(7)
    bank = FingerprintBank.build(hidden, ids, alpha, meta=META)
    path = tmp_path / "task.bank.safetensors"
    bank.save(path)
    assert os.listdir(tmp_path) == [path.name]  # the temp file was renamed, not left behind
    loaded = FingerprintBank.load(path)
    for name in ("classes", "vectors", "counts", "mass"):
        assert torch.equal(getattr(loaded, name), getattr(bank, name))
    assert loaded.meta == bank.meta == {**META, "min_norm": 1e-6}  # creation parameter kept


def _write_raw(path, tensors, meta=None):
    from safetensors.torch import save_file

    header = {"format": "trim_fast.fingerprint_bank", "version": "2",
              "meta": json.dumps(meta or {})}
    save_file(tensors, str(path), metadata=header)


def test_load_rejects_corrupt_and_inconsistent_files(tmp_path):
    bank = FingerprintBank.build(*target_tokens(9), meta=META)
    good = tmp_path / "good.safetensors"
    bank.save(good)
    raw = good.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[: len(raw) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x13 not a safetensors file at all")
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match="not a readable fingerprint bank"):
            FingerprintBank.load(path)

    t = {"classes": bank.classes, "vectors": bank.vectors, "counts": bank.counts, "mass": bank.mass}
    cases = {
        "zero classes": ({**t, "classes": t["classes"][:0], "vectors": t["vectors"][:0],
                          "counts": t["counts"][:0], "mass": t["mass"][:0]}, "no fingerprints"),
        "short counts": ({**t, "counts": t["counts"][:-1]}, "counts must have shape"),
        "unsorted": ({**t, "classes": t["classes"].flip(0).contiguous()}, "strictly increasing"),
        "not unit": ({**t, "vectors": t["vectors"] * 2}, "not unit rows"),
        "nan": ({**t, "vectors": torch.full_like(t["vectors"], float("nan"))}, "NaN"),
        "missing": ({k: v for k, v in t.items() if k != "mass"}, "lacks tensor"),
    }
    for name, (tensors, match) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        _write_raw(path, tensors)
        with pytest.raises(ValueError, match=match):
            FingerprintBank.load(path)

    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    save_file(t, str(other), metadata={"format": "something-else"})
    with pytest.raises(ValueError, match="not a trim_fast fingerprint bank"):
        FingerprintBank.load(other)


class _Trap:
    """Unpickling this would create a file: the loader must never unpickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_never_unpickles(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "bank.pt"
    with open(path, "wb") as f:
        pickle.dump(_Trap(str(marker)), f)
    with pytest.raises(ValueError, match="not a readable fingerprint bank"):
        FingerprintBank.load(path)
    assert not marker.exists()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FingerprintBank.load(tmp_path / "nope.safetensors")


# ---------------------------------------------------------------------------- index ----------

def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("backend", [pytest.param("faiss-cpu", marks=pytest.mark.faiss), "torch"])
def test_exact_index_agrees_with_matmul(backend):
    g = torch.Generator().manual_seed(11)
    vectors = unit(torch.randn(300, 32, generator=g))
    queries = unit(torch.randn(500, 32, generator=g))
    index = NearestIndex(vectors, backend=backend)
    best, rows = index.search(queries)
    full = queries.double() @ vectors.double().t()
    want_best, want_rows = full.max(dim=1)
    top2 = full.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-5  # rows without a near-tie decide the argmax
    assert clear.float().mean() > 0.95
    assert torch.equal(rows[clear], want_rows[clear])
    torch.testing.assert_close(best.double(), want_best, rtol=0, atol=1e-5)


@pytest.mark.faiss
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_finds_clustered_neighbours(kind):
    g = torch.Generator().manual_seed(12)
    vectors = unit(torch.randn(2000, 16, generator=g))
    queries = unit(vectors[:200] + 0.05 * torch.randn(200, 16, generator=g))
    index = NearestIndex(vectors, backend="faiss-cpu", kind=kind, nlist=16, nprobe=16)
    best, rows = index.search(queries)
    want_best, want_rows = torch_nearest(vectors, queries)
    # IVF probing every list is exact; HNSW is approximate, so only a high recall is asked.
    recall = (rows == want_rows).float().mean()
    assert recall == 1.0 if kind == "ivf" else recall >= 0.95
    hit = rows == want_rows
    torch.testing.assert_close(best[hit], want_best[hit], rtol=0, atol=1e-5)


def test_index_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        NearestIndex(torch.empty(0, 4))
    index = NearestIndex(unit(torch.randn(5, 4)), backend="torch")
    with pytest.raises(ValueError, match="queries must be"):
        index.search(torch.randn(3, 5))
    with pytest.raises(ValueError, match="exact only"):
        NearestIndex(unit(torch.randn(5, 4)), backend="torch", kind="hnsw")
    with pytest.raises(ValueError, match="backend must be"):
        NearestIndex(unit(torch.randn(5, 4)), backend="annoy")


def test_meta_must_be_json():
    hidden, ids, alpha = target_tokens(13, m=10)
    with pytest.raises(TypeError, match="JSON"):
        FingerprintBank.build(hidden, ids, alpha, meta={"when": object()})


def test_class_sums_matmul_path_equals_index_add():
    """The deterministic one-hot path (used on CUDA) sums the same as index_add_."""
    from trim_fast.bank import fingerprints

    hidden, ids, alpha = target_tokens(14, m=700, vocab=40)
    rows = torch.cat([hidden.double(), alpha.double()[:, None]], dim=1)
    old = fingerprints._ONEHOT_BLOCK
    fingerprints._ONEHOT_BLOCK = 128  # several blocks
    try:
        c1, s1, n1 = fingerprints.class_sums(ids, rows, use_matmul=True)
    finally:
        fingerprints._ONEHOT_BLOCK = old
    c2, s2, n2 = fingerprints.class_sums(ids, rows, use_matmul=False)
    assert torch.equal(c1, c2) and torch.equal(n1, n2)
    torch.testing.assert_close(s1, s2, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_cuda_build_is_deterministic_and_matches_reference():
    hidden, ids, alpha = target_tokens(15, m=5000, vocab=50)
    first = FingerprintBank.build(hidden.cuda(), ids.cuda(), alpha.cuda(), meta={})
    second = FingerprintBank.build(hidden.cuda(), ids.cuda(), alpha.cuda(), meta={})
    assert torch.equal(first.vectors, second.vectors) and torch.equal(first.mass, second.mass)
    assert_bank_matches(first, reference.build_fingerprints(hidden, ids, alpha))
