import json
import os

import pytest

from trim_fast.data import open_records
from trim_fast.demo.generate import FAMILIES, generate
from trim_fast.run.files import atomic_open
from trim_fast.run.outputs import ensure_out_dir


def test_demo_data_is_deterministic_labelled_and_held_out(tmp_path):
    a = generate(str(tmp_path / "a"), pool_size=120, targets_per_family=5, seed=3)
    b = generate(str(tmp_path / "b"), pool_size=120, targets_per_family=5, seed=3)
    for pa, pb in zip(a["pool"], b["pool"]):
        assert open(pa, "rb").read() == open(pb, "rb").read()
    pool = list(open_records(a["pool"]))
    assert len(pool) == 120 and {e.format for e in pool} == {"messages", "alpaca"}
    assert set(a["family_counts"]) == set(FAMILIES) and min(a["family_counts"].values()) == 20
    pool_texts = {json.dumps(e.messages) for e in pool}
    for fam, path in a["targets"].items():
        targets = list(open_records(path))
        assert len(targets) == 5 and {t.meta["family"] for t in targets} == {fam}
        assert not any(json.dumps(t.messages) in pool_texts for t in targets)


def test_atomic_open_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(str(path)) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
    with atomic_open(str(path)) as f:
        f.write("new")
    assert path.read_text() == "new"


def test_unwritable_out_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="not writable"):
        ensure_out_dir(str(blocker / "sub"))
