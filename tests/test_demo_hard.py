import json
import os

import pytest

from trim_fast.data import load_examples
from trim_fast.demo.hard import FAMILIES, PAIRS, PARTNER, generate, heldout_examples, make_example
from trim_fast.evaluation.metrics import words


def _text(ex):
    return "\n".join(m["content"] for m in ex.messages)


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    out = tmp_path_factory.mktemp("hard")
    return generate(str(out), per_family=60, targets_per_family=8, seed=0)


def test_deterministic_by_seed(tmp_path):
    a = generate(str(tmp_path / "a"), per_family=12, targets_per_family=3, seed=5)
    b = generate(str(tmp_path / "b"), per_family=12, targets_per_family=3, seed=5)
    c = generate(str(tmp_path / "c"), per_family=12, targets_per_family=3, seed=6)
    files = lambda m: m["pool"] + [m["targets"][f] for f in FAMILIES]  # noqa: E731
    for pa, pb in zip(files(a), files(b)):
        assert open(pa, "rb").read() == open(pb, "rb").read()
    assert any(open(pa, "rb").read() != open(pc, "rb").read() for pa, pc in zip(files(a), files(c)))


def test_rerun_leaves_identical_files_untouched(tmp_path):
    m = generate(str(tmp_path), per_family=5, targets_per_family=2, seed=1)
    before = {p: os.stat(p).st_mtime_ns for p in m["pool"]}
    generate(str(tmp_path), per_family=5, targets_per_family=2, seed=1)
    assert before == {p: os.stat(p).st_mtime_ns for p in m["pool"]}


def test_counts_labels_formats_and_manifest(hard):
    assert len(FAMILIES) >= 8 and len(PAIRS) >= 4
    pool = load_examples(hard["pool"])
    assert len(pool) == 60 * len(FAMILIES)
    assert {e.format for e in pool} == {"messages", "alpaca"}
    counts = {f: sum(e.meta["family"] == f for e in pool) for f in FAMILIES}
    assert counts == {f: 60 for f in FAMILIES} == hard["family_counts"]
    assert len({e.id for e in pool}) == len(pool)
    assert all(isinstance(e.raw["id"], str) and e.raw["family"] in FAMILIES for e in pool)
    assert len({json.dumps(e.messages) for e in pool}) == len(pool)  # no duplicates
    assert hard["pairs"] == PARTNER
    assert all(hard["pairs"][hard["pairs"][f]] == f and hard["pairs"][f] != f for f in FAMILIES)
    assert set(hard["targets"]) == set(FAMILIES)


def test_targets_are_held_out(hard):
    pool_texts = {json.dumps(e.messages) for e in load_examples(hard["pool"])}
    for fam, path in hard["targets"].items():
        targets = load_examples([path])
        assert len(targets) == 8 and {t.meta["family"] for t in targets} == {fam}
        assert len({json.dumps(t.messages) for t in targets}) == 8
        assert not any(json.dumps(t.messages) in pool_texts for t in targets)


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def test_pairs_share_vocabulary_but_not_labels(hard):
    pool = load_examples(hard["pool"])
    vocab = {f: set() for f in FAMILIES}
    for e in pool:
        vocab[e.meta["family"]] |= set(words(_text(e)))
    for a, b in PAIRS:
        within = _jaccard(vocab[a], vocab[b])
        across = max(_jaccard(vocab[a], vocab[c]) for c in FAMILIES if c not in (a, b))
        # the partner shares far more words than any other family does
        assert within >= 0.25 and within >= 2 * across, (a, b, within, across)
        # and yet no example of one is an example of the other
        ta = {_text(e) for e in pool if e.meta["family"] == a}
        tb = {_text(e) for e in pool if e.meta["family"] == b}
        assert not ta & tb


def test_partner_examples_overlap_in_words():
    """Example by example too: a family's example shares most of its words with its partner's."""
    import random

    for a, b in PAIRS:
        va = set().union(*(words(" ".join(make_example(a, random.Random(s)))) for s in range(40)))
        vb = set().union(*(words(" ".join(make_example(b, random.Random(s)))) for s in range(40)))
        assert len(va & vb) >= 15, (a, b)


def test_heldout_examples_are_new(hard):
    pool = load_examples(hard["pool"])
    for fam in ("http_code", "unit_check"):
        held = heldout_examples(fam, 10, seed=7, exclude=pool)
        assert len(held) == 10 and {e.meta["family"] for e in held} == {fam}
        pool_texts = {json.dumps(e.messages) for e in pool}
        assert not any(json.dumps(e.messages) in pool_texts for e in held)
        again = heldout_examples(fam, 10, seed=7, exclude=pool)
        assert [e.messages for e in again] == [e.messages for e in held]


def test_unknown_family_is_refused():
    import random

    with pytest.raises(ValueError, match="unknown family"):
        make_example("nope", random.Random(0))
