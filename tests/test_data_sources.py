"""Sources: every input kind, the Records API, content digests, the hub policy and bad input."""
import gzip
import json
import logging
import math
import pathlib

import pytest

from trim_fast.data import DataError, open_records
from trim_fast.digests import value_digest

CHATS = [{"id": f"c{i}", "messages": [{"role": "user", "content": f"question {i}"},
                                      {"role": "assistant", "content": f"answer {i}"}]}
         for i in range(5)]


def _jsonl(records):
    return "".join(json.dumps(r) + "\n" for r in records)


def _write(path, records):
    path.write_text(_jsonl(records))
    return str(path)


def _ids(records):
    return [e.id for e in records]


# ----------------------------------------------------------------------------- file kinds

def test_jsonl_lines_are_numbered_and_blank_lines_skipped(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    exs = list(open_records(str(path)))
    assert [(e.line, e.id, e.source) for e in exs] == [
        (1, f"{path}:1", str(path)), (3, f"{path}:3", str(path))]
    assert exs[1].raw == {"text": "two"} and exs[1].format == "text"


def test_upper_case_extension(tmp_path):
    path = _write(tmp_path / "POOL.JSONL", CHATS[:2])
    assert _ids(open_records(path)) == ["c0", "c1"]


def test_json_array_and_json_lines(tmp_path):
    arr = tmp_path / "a.json"
    arr.write_text("\n  " + json.dumps(CHATS[:3], indent=2))
    exs = list(open_records(str(arr)))
    assert _ids(exs) == ["c0", "c1", "c2"] and [e.line for e in exs] == [1, 2, 3]
    assert exs[2].raw == CHATS[2]
    lines = _write(tmp_path / "l.json", CHATS[:2])
    assert _ids(open_records(lines)) == ["c0", "c1"]


def test_compressed_jsonl_and_json(tmp_path):
    import zstandard

    gz = tmp_path / "p.jsonl.gz"
    gz.write_bytes(gzip.compress(_jsonl(CHATS[:2]).encode()))
    jgz = tmp_path / "p.json.gz"
    jgz.write_bytes(gzip.compress(json.dumps(CHATS[2:4]).encode()))
    zst = tmp_path / "p.jsonl.zst"
    # two frames, as when shards are concatenated: both must be read
    zst.write_bytes(zstandard.ZstdCompressor().compress(_jsonl(CHATS[:1]).encode())
                    + zstandard.ZstdCompressor().compress(_jsonl(CHATS[1:3]).encode()))
    assert _ids(open_records(str(gz))) == ["c0", "c1"]
    assert _ids(open_records(str(jgz))) == ["c2", "c3"]
    assert _ids(open_records(str(zst))) == ["c0", "c1", "c2"]
    assert [e.line for e in open_records(str(zst))] == [1, 2, 3]


def test_parquet_streams_by_batches_and_keeps_bytes_and_nan(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trim_fast.data.readers import _Reader

    monkeypatch.setattr(_Reader, "batch", 2)  # several batches even for a tiny file
    path = str(tmp_path / "p.parquet")
    pq.write_table(pa.table({"text": ["a", "b", "c", "d", "e"],
                             "blob": [b"\x00\xff", None, b"x", b"", b"y"],
                             "score": [float("nan"), 1.5, 2.0, 3.0, 4.0]}), path)
    exs = list(open_records(path))
    assert [e.text for e in exs] == ["a", "b", "c", "d", "e"] and [e.line for e in exs] == [1, 2, 3, 4, 5]
    assert exs[0].raw["blob"] == b"\x00\xff" and isinstance(exs[0].raw["blob"], bytes)
    assert isinstance(exs[0].raw["score"], float) and math.isnan(exs[0].raw["score"])
    assert exs[1].raw["blob"] is None


def test_glob_of_shards_is_sorted_and_described(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _write(shards / "part-2.jsonl", CHATS[3:])
    _write(shards / "part-0.jsonl", CHATS[:1])
    _write(shards / "part-1.jsonl", CHATS[1:3])
    (shards / "notes.txt").write_text("not data")
    pattern = str(shards / "*.jsonl")
    recs = open_records(pattern)
    assert _ids(recs) == ["c0", "c1", "c2", "c3", "c4"]
    desc = recs.describe()
    assert [d["path"] for d in desc] == [str(shards / f"part-{i}.jsonl") for i in range(3)]
    assert all(d["glob"] == pattern and d["kind"] == "jsonl" and d["format"] == "messages"
               for d in desc)
    with pytest.raises(DataError, match="no file matches"):
        open_records(str(shards / "*.parquet"))


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(CHATS)
    ds.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": ds.select(range(3)), "test": ds.select(range(3, 5))}).save_to_disk(
        str(tmp_path / "two"))
    exs = list(open_records(str(tmp_path / "one")))
    assert _ids(exs) == [c["id"] for c in CHATS] and exs[0].raw == CHATS[0]
    assert exs[0].source == str(tmp_path / "one") and exs[4].line == 5
    with pytest.raises(DataError, match=r"several splits \(train, test\); pass split="):
        open_records(str(tmp_path / "two")).count()
    test = open_records(str(tmp_path / "two"), split="test")
    assert _ids(test) == ["c3", "c4"]
    assert test.describe() == [{"kind": "disk", "path": str(tmp_path / "two"), "split": "test",
                                "subset": None, "format": "messages"}]
    with pytest.raises(DataError, match="no split 'dev'"):
        open_records(str(tmp_path / "two"), split="dev").count()


def test_in_memory_records_and_datasets_objects():
    import datasets

    recs = open_records(CHATS[:2])
    exs = list(recs)
    assert _ids(exs) == ["c0", "c1"] and exs[0].source == "records" and exs[0].raw is CHATS[0]
    assert recs.describe() == [{"kind": "records", "name": "records", "split": None,
                                "subset": None, "rows": 2, "format": "messages"}]
    no_ids = [{"text": "a"}, {"text": "b"}]
    assert _ids(open_records(no_ids)) == ["records:1", "records:2"]
    ds = datasets.Dataset.from_list(CHATS)
    assert _ids(open_records(ds)) == [c["id"] for c in CHATS]
    assert _ids(open_records(ds.to_iterable_dataset())) == [c["id"] for c in CHATS]
    dd = datasets.DatasetDict({"train": ds})
    with pytest.raises(DataError, match="pass split="):
        open_records(dd)
    assert open_records(dd, split="train").count() == 5


def test_list_of_sources_is_read_in_order(tmp_path):
    import datasets

    path = _write(tmp_path / "a.jsonl", CHATS[:2])
    recs = open_records([path, [{"text": "mem"}], datasets.Dataset.from_list([{"text": "ds"}]),
                         [{"text": "mem2"}]])
    exs = list(recs)
    assert [e.id for e in exs] == ["c0", "c1", "records[1]:1", "dataset[2]:1", "records[3]:1"]
    assert [d["kind"] for d in recs.describe()] == ["jsonl", "records", "dataset", "records"]
    json.dumps(recs.describe())  # JSON-able, for manifests


def test_duplicate_ids_across_sources_name_both_places(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"id": "x", "text": "one"}, {"id": "y", "text": "two"}])
    b = _write(tmp_path / "b.jsonl", [{"id": "z", "text": "three"}, {"id": "y", "text": "four"}])
    with pytest.raises(DataError, match=rf"{b}:2: duplicate id 'y' \(first seen at {a}:2\)"):
        list(open_records([a, b]))
    with pytest.raises(DataError, match=r"records\[1\]:1: duplicate id 'x' \(first seen at records\[0\]:1\)"):
        list(open_records([[{"id": "x", "text": "a"}], [{"id": "x", "text": "b"}]]))


# ----------------------------------------------------------------------------- Records API

def test_records_reiterate_take_and_count(tmp_path):
    recs = open_records(_write(tmp_path / "p.jsonl", CHATS))
    assert _ids(recs) == _ids(recs)  # a second pass streams again from the start
    assert recs.count() == 5
    assert _ids(recs.take([3, 0, 3])) == ["c3", "c0", "c3"]
    assert recs.take([]) == []
    with pytest.raises(IndexError, match="past the end"):
        recs.take([1, 5])


def test_iteration_streams(tmp_path):
    """The first records come out before a bad line later in the file is read."""
    path = tmp_path / "p.jsonl"
    path.write_text(_jsonl(CHATS[:2]) + "{broken\n")
    it = iter(open_records(str(path)))
    assert next(it).id == "c0" and next(it).id == "c1"
    with pytest.raises(DataError, match=r"p\.jsonl:3: malformed JSON"):
        next(it)
    assert _ids(open_records(str(path)).take([1])) == ["c1"]  # take stops once it has them


def test_records_reads_the_file_again_on_each_pass(tmp_path):
    path = tmp_path / "p.jsonl"
    recs = open_records(_write(path, CHATS[:2]))
    assert recs.count() == 2
    path.write_text(_jsonl(CHATS[:3]))
    assert recs.count() == 3


# ----------------------------------------------------------------------------- digests

def test_jsonl_digest_detects_a_same_length_edit(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(_jsonl([{"text": "abc"}, {"text": "xyz"}]))
    first = [e.digest() for e in open_records(str(path))]
    assert first == [e.digest() for e in open_records(str(path))]
    assert all(isinstance(d, bytes) and len(d) == 16 for d in first) and first[0] != first[1]
    path.write_text(_jsonl([{"text": "abd"}, {"text": "xyz"}]))  # same byte length
    second = [e.digest() for e in open_records(str(path))]
    assert second[0] != first[0] and second[1] == first[1]


def test_value_digest_is_canonical_and_typed():
    import numpy as np
    import pyarrow as pa

    base = {"a": [1, {"b": b"\x00"}], "n": float("nan")}
    assert value_digest(base) == value_digest({"a": [1, {"b": b"\x00"}], "n": float("nan")})
    assert value_digest({"x": np.int64(7), "y": np.array([1.5, 2.5])}) == \
        value_digest({"x": 7, "y": [1.5, 2.5]})
    assert value_digest({"x": pa.scalar(7)}) == value_digest({"x": 7})
    distinct = [1, 1.0, "1", True, b"1", None, [1], ["ab"], ["a", "b"], {"a": 1}, {"a": "1"},
                float("nan"), 0.0, -0.0, {"a": 1, "b": 2}, {"b": 2, "a": 1}, "\ud800", [[1], 2],
                [1, [2]]]
    digests = [value_digest(v) for v in distinct]
    assert len(set(digests)) == len(distinct)
    with pytest.raises(DataError, match="cannot digest"):
        value_digest({"x": object()})


def test_digest_of_parquet_and_in_memory_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "p.parquet")
    pq.write_table(pa.table({"text": ["a", "a"], "blob": [b"\x01", b"\x02"],
                             "v": [float("nan"), float("nan")]}), path)
    d1 = [e.digest() for e in open_records(path)]
    assert d1 == [e.digest() for e in open_records(path)] and d1[0] != d1[1]
    recs = [{"text": "same"}, {"text": "same", "extra": 1}]
    d2 = [e.digest() for e in open_records(recs)]
    assert d2[0] != d2[1] and d2 == [e.digest() for e in open_records(recs)]


# ----------------------------------------------------------------------------- hub / network

@pytest.fixture
def no_hub(monkeypatch):
    import datasets

    def refuse(*args, **kwargs):
        raise AssertionError(f"the hub was contacted: {args} {kwargs}")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


@pytest.mark.parametrize("name", ["./missing.jsonl", "../missing", "/abs/missing", "~/missing",
                                  "missing.jsonl", "pool.JSONL.GZ", "missing.parquet",
                                  "localdir/missing", "a/b/c", "not a hub id"])
def test_missing_path_is_no_such_file_without_network(tmp_path, monkeypatch, no_hub, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "localdir").mkdir()
    with pytest.raises(DataError, match="no such file"):
        open_records(name).count()


def test_hub_id_streams_with_a_warning_first(monkeypatch, caplog):
    import datasets

    calls = []

    def fake_load_dataset(name, subset=None, **kwargs):
        # the warning must already be out when the request is made
        assert any("network" in r.getMessage() and name in r.getMessage() for r in caplog.records)
        calls.append((name, subset, kwargs))
        return datasets.Dataset.from_list(CHATS[:3]).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with caplog.at_level(logging.WARNING, logger="trim_fast.data"):
        recs = open_records("someorg/chat-data", split="train", subset="en")
        assert calls == []  # opening makes no request
        assert recs.describe() == [{"kind": "hub", "name": "someorg/chat-data", "split": "train",
                                    "subset": "en", "format": None}]
        exs = list(recs)
    assert calls == [("someorg/chat-data", "en", {"split": "train", "streaming": True})]
    assert _ids(exs) == ["c0", "c1", "c2"] and exs[0].source == "someorg/chat-data"
    assert recs.describe()[0]["format"] == "messages"
    assert recs.count() == 3 and len(calls) == 1  # the stream is reopened, not reloaded


def test_hub_id_needs_split_and_reports_failures(monkeypatch, no_hub):
    import datasets

    with pytest.raises(DataError, match="needs split="):
        open_records("someorg/chat-data")

    def fail(*args, **kwargs):
        raise ConnectionError("unreachable")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError, match=r"someorg/chat-data: cannot open the hub dataset .*unreachable"):
        open_records("someorg/chat-data", split="train").count()


# ----------------------------------------------------------------------------- bad input

def test_non_utf8_names_line_and_byte(tmp_path):
    path = tmp_path / "p.jsonl"
    good = (json.dumps({"text": "ok"}) + "\n").encode()
    path.write_bytes(good + b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=rf"p\.jsonl:2: not UTF-8 text: byte 0xe9 at byte 13 of "
                                        rf"the line \(byte {len(good) + 13} of the file\)"):
        list(open_records(str(path)))
    arr = tmp_path / "a.json"
    arr.write_bytes(b'[\n{"text": "ok"},\n{"text": "caf\xe9"}\n]')
    with pytest.raises(DataError, match=r"a\.json:3: not UTF-8 text: byte 0xe9"):
        list(open_records(str(arr)))


@pytest.mark.parametrize("name,payload,match", [
    ("p.jsonl", lambda: gzip.compress(b'{"text": "a"}\n'), r"p\.jsonl: looks gzip-compressed; name it p\.jsonl\.gz"),
    ("p.json", lambda: gzip.compress(b'{"text": "a"}\n'), r"looks gzip-compressed; name it p\.json\.gz"),
    ("p.jsonl", lambda: __import__("zstandard").ZstdCompressor().compress(b'{"text": "a"}\n'),
     r"looks zstd-compressed; name it p\.jsonl\.zst"),
    ("p.jsonl.gz", lambda: b'{"text": "a"}\n', r"p\.jsonl\.gz: cannot read the file \(gzip\)"),
    ("p.jsonl.gz", lambda: gzip.compress(b'{"text": "a"}\n' * 50)[:30], r"p\.jsonl\.gz: cannot read"),
    ("p.parquet", lambda: b'{"text": "a"}\n', r"p\.parquet: not a readable Parquet file"),
])
def test_mislabelled_files(tmp_path, name, payload, match):
    (tmp_path / name).write_bytes(payload())
    with pytest.raises(DataError, match=match):
        open_records(str(tmp_path / name)).count()


def test_parquet_named_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a"]}), str(tmp_path / "p.jsonl"))
    with pytest.raises(DataError, match=r"looks a Parquet file; name it p\.parquet"):
        open_records(str(tmp_path / "p.jsonl"))


def test_directory_and_unknown_extension(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match=r"is a directory but not a datasets save_to_disk folder.*glob"):
        open_records(str(tmp_path / "d"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"x\.csv: unknown file type; supported: \.jsonl, \.json, "
                                        r"\.parquet, \.jsonl\.gz"):
        open_records(str(tmp_path / "x.csv"))


@pytest.mark.parametrize("name,content,match", [
    ("f.jsonl", '{"text": "ok"}\n{"text": broken\n', r"f\.jsonl:2: malformed JSON"),
    ("f.json", '{"text": "ok"}\n{"text": \n', r"f\.json:2: malformed JSON .*JSON array of records or one record per line"),
    ("f.json", '[{"text": "ok"},\n {"text": }]', r"f\.json:2: malformed JSON"),
    ("f.json", '{\n"text": "ok"\n}\n', r"f\.json:1: malformed JSON"),
    ("f.jsonl", '[1, 2]\n', r"f\.jsonl:1: a record must be a JSON object"),
    ("f.jsonl", "\n\n", r"f\.jsonl: empty file \(no records\)"),
    ("f.json", "[]", r"f\.json: empty file \(no records\)"),
    ("f.jsonl", '{"text": "a\\ud800b"}\n', r"f\.jsonl:1: field 'text' holds '\\ud800' at character 1, a lone surrogate"),
])
def test_bad_content_names_file_and_line(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=match):
        list(open_records(str(tmp_path / name)))


def test_bad_arguments():
    with pytest.raises(DataError, match="nothing to read"):
        open_records([])
    with pytest.raises(DataError, match="mixes records"):
        open_records([{"text": "a"}, "b.jsonl"])
    with pytest.raises(DataError, match="cannot read a int"):
        open_records(3)
    with pytest.raises(ValueError, match="format must be one of"):
        open_records([{"text": "a"}], format="chatml")
    with pytest.raises(ValueError, match="not both"):
        open_records([{"text": "a"}], format="text", to_messages=lambda r: r["text"])


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _jsonl(CHATS[:2]).encode())
    assert _ids(open_records(str(path))) == ["c0", "c1"]


def test_source_is_the_path_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "p.jsonl", CHATS[:1])
    assert [e.source for e in open_records("p.jsonl")] == ["p.jsonl"]
    assert [e.source for e in open_records("./p.jsonl")] == ["./p.jsonl"]
    assert [e.source for e in open_records(pathlib.Path("p.jsonl"))] == ["p.jsonl"]


def test_a_dataset_with_a_transform_is_read_as_the_user_sees_it():
    import datasets

    raw = datasets.Dataset.from_list([{"q": f"question {i}", "a": f"answer {i}"} for i in range(3)])
    shown = raw.with_transform(lambda b: {"text": [f"{q} {a}" for q, a in zip(b["q"], b["a"])]})
    assert [ex.text for ex in open_records(shown)] == ["question 0 answer 0", "question 1 answer 1",
                                                      "question 2 answer 2"]


def test_network_notice_reaches_stderr_without_logging_configured(recwarn):
    from trim_fast._notice import must_see

    quiet = logging.getLogger("trim_fast.test_notice")
    quiet.propagate, quiet.handlers = False, [logging.NullHandler()]  # a program that set up nothing
    try:
        must_see(quiet, "using the network: fetching %r", "org/name")
        assert [str(w.message) for w in recwarn] == ["using the network: fetching 'org/name'"]
        recwarn.clear()
        quiet.handlers.append(logging.StreamHandler())  # a program that shows logs: said once
        must_see(quiet, "using the network: fetching %r", "org/name")
        assert len(recwarn) == 0
    finally:
        quiet.propagate, quiet.handlers = True, []
