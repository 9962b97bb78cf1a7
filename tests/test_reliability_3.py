"""Issue 20: the third reliability round (docs/RELIABILITY.md section 8) and the error hierarchy.

Each BAD case of the issue is a test here that failed on the code before the fix; ``no_model``
(from ``test_reliability``) fails a test if a model or tokenizer loads, which is how "refused
before the model loads" is asserted.
"""
from __future__ import annotations

import errno
import io
import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
import torch
import yaml

import trim_fast
from trim_fast.cli import main
from trim_fast.data import open_records
from test_reliability import (_chats, _fresh_cli_logging, _write_jsonl, cli, no_model, ok,  # noqa: F401
                              refused, targets, pool)


def _select(tmp_path, model, pool_path, targets_path, out="out", *extra):
    return ["select", "--model", model, "--pool", pool_path, "--targets", targets_path,
            "--out", str(tmp_path / out), "--no-progress", *extra]


# ---------------------------------------------------------------------------------------------
# the ten BAD cases


@pytest.mark.parametrize("extra", [{"input_ids": [1, 2, 3]}, {"text": "x"},
                                   {"instruction": "a", "output": "b"}])
def test_1_two_shapes_in_any_record_are_refused(tmp_path, capsys, no_model, targets, extra):
    records = _chats(6)
    records[2].update(extra)
    path = _write_jsonl(tmp_path / "p.jsonl", records)
    text = refused(capsys, *_select(tmp_path, "unused", path, targets))
    assert "p.jsonl:3" in text and "more than one shape" in text
    with pytest.raises(trim_fast.DataError, match=r"p\.jsonl:3: .*more than one shape"):
        open_records(path).count()


def test_2_deeply_nested_record_is_refused_before_the_model(tmp_path, capsys, no_model, targets):
    path = tmp_path / "p.jsonl"
    _write_jsonl(path, _chats(6))
    lines = path.read_text().splitlines()
    rec = json.loads(lines[4])
    lines[4] = json.dumps(rec)[:-1] + ', "meta": ' + "[" * 900 + "]" * 900 + "}"
    path.write_text("\n".join(lines) + "\n")
    json.loads(lines[4])  # valid JSON
    text = refused(capsys, *_select(tmp_path, "unused", str(path), targets))
    assert "p.jsonl:5" in text and "deep" in text
    assert not os.path.exists(tmp_path / "out" / "scores.parquet")


def _zst_with_blocks(path, n=2000):
    """A .jsonl.zst whose frame has a block boundary at half the records; that offset."""
    import zstandard

    lines = [json.dumps({"id": f"r{i}", "text": f"record {i} " + "x" * (i % 50)}).encode() + b"\n"
             for i in range(n)]
    buf = io.BytesIO()
    w = zstandard.ZstdCompressor(level=3).stream_writer(buf, closefd=False)
    w.write(b"".join(lines[: n // 2]))
    w.flush(zstandard.FLUSH_BLOCK)
    boundary = buf.tell()
    w.write(b"".join(lines[n // 2:]))
    w.close()
    data = buf.getvalue()
    path.write_bytes(data)
    return data, boundary


def test_3_truncated_zstd_is_named_truncated(tmp_path):
    path = tmp_path / "p.jsonl.zst"
    data, boundary = _zst_with_blocks(path)
    assert open_records(str(path)).count() == 2000
    path.write_bytes(data[:boundary])  # before the fix: read as a 1000-record pool
    with pytest.raises(trim_fast.DataError, match="truncated"):
        open_records(str(path)).count()
    for cut in (5, 13, boundary // 2, boundary + 1, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(trim_fast.DataError, match="truncated"):
            open_records(str(path)).count()


def test_4_symlink_loop_under_a_glob_reads_each_file_once(tmp_path, monkeypatch):
    sub = tmp_path / "dir" / "sub"
    sub.mkdir(parents=True)
    _write_jsonl(sub / "a.jsonl", _chats(20, "a"))
    _write_jsonl(tmp_path / "dir" / "b.jsonl", _chats(10, "b"))
    os.symlink("..", sub / "up")  # before the fix: 1,230 records from 30
    monkeypatch.chdir(tmp_path)
    recs = open_records("dir/**/*.jsonl")
    assert recs.count() == 30
    assert len(recs.describe()) == 2
    os.symlink("sub", tmp_path / "dir" / "alias")  # with two loops glob.glob walks ~2**40 paths
    assert open_records("dir/**/*.jsonl").count() == 30


def test_5_truncated_safetensors_is_named(tmp_path, capsys, tiny_model_dir, pool, targets):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    text = refused(capsys, *_select(tmp_path, str(model), pool, targets))
    assert "model.safetensors" in text and "cut short" in text


def test_6_vocab_smaller_than_the_tokenizer_is_refused(tmp_path, capsys, smollm_tokenizer,
                                                       tiny_model_dir, pool, targets):
    from transformers import AutoModelForCausalLM

    from trim_fast.models.tiny import tiny_config

    small = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=1000))
    with pytest.raises(trim_fast.ModelError, match="1000 embedding rows"):
        trim_fast.Selector(small.model, smollm_tokenizer)
    model = tmp_path / "small"
    small.save_pretrained(model)
    for f in os.listdir(tiny_model_dir):
        if "token" in f or f.endswith((".txt", ".model")) or f == "vocab.json":
            shutil.copy(os.path.join(tiny_model_dir, f), model / f)
    text = refused(capsys, *_select(tmp_path, str(model), pool, targets))
    assert "embedding rows" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine has CUDA")
def test_7_device_cuda_without_cuda_is_refused_first(tmp_path, capsys, no_model, pool, targets):
    text = refused(capsys, *_select(tmp_path, "unused", pool, targets), "--device", "cuda")
    assert "--device cuda" in text and "CUDA" in text


@pytest.fixture
def scored(tmp_path, capsys, tiny_model_dir, targets):
    """A pool with ids and one without, each selected once: (dir, pool, pool without ids)."""
    with_ids = _write_jsonl(tmp_path / "ids.jsonl", _chats(12))
    no_ids = _write_jsonl(tmp_path / "noids.jsonl",
                          [{k: v for k, v in r.items() if k != "id"} for r in _chats(12, "n")])
    for p, out in ((with_ids, "a"), (no_ids, "b")):
        ok(capsys, *_select(tmp_path, tiny_model_dir, p, targets, out))
    return tmp_path, with_ids, no_ids


def test_8_9_pick_refuses_a_pool_edited_since_it_was_scored(scored, capsys):
    tmp, with_ids, no_ids = scored
    pick = ["pick", "--k", "3", "--no-progress"]
    ok(capsys, *pick, "--scores", tmp / "a" / "scores.parquet", "--pool", with_ids, "--out", tmp / "pa")
    assert "digest" in pq.read_schema(tmp / "a" / "scores.parquet").names
    # 8: record 4 edited in place, its id kept
    lines = open(with_ids).read().splitlines()
    rec = json.loads(lines[3])
    rec["messages"][1]["content"] = "An old silent pond / a frog jumps in / splash"
    lines[3] = json.dumps(rec)
    open(with_ids, "w").write("\n".join(lines) + "\n")
    text = refused(capsys, *pick, "--scores", tmp / "a" / "scores.parquet", "--pool", with_ids,
                   "--out", tmp / "pa2")
    assert "ids.jsonl:4" in text and "'r3'" in text and "edited" in text
    assert not os.path.exists(tmp / "pa2" / "top_k3.jsonl")
    # 9: two lines swapped in a pool without ids
    lines = open(no_ids).read().splitlines()
    lines[1], lines[6] = lines[6], lines[1]
    open(no_ids, "w").write("\n".join(lines) + "\n")
    text = refused(capsys, *pick, "--scores", tmp / "b" / "scores.parquet", "--pool", no_ids,
                   "--out", tmp / "pb")
    assert "noids.jsonl:" in text and "edited" in text


def test_10_pool_edited_while_select_runs_writes_nothing(tmp_path, capsys, tiny_model_dir,
                                                         targets, monkeypatch):
    path = _write_jsonl(tmp_path / "p.jsonl", _chats(12))
    score = trim_fast.Selector.score

    def score_then_edit(self, *args, **kwargs):
        result = score(self, *args, **kwargs)
        lines = open(path).read().splitlines()
        rec = json.loads(lines[2])
        rec["messages"][1]["content"] = "a haiku, not the scored text"
        lines[2] = json.dumps(rec)
        open(path, "w").write("\n".join(lines) + "\n")
        return result

    monkeypatch.setattr(trim_fast.Selector, "score", score_then_edit)
    text = refused(capsys, *_select(tmp_path, tiny_model_dir, path, targets))
    assert "p.jsonl:3" in text and "changed while the run was scoring" in text
    left = set(os.listdir(tmp_path / "out")) - {"work"}
    assert not left, left


# ---------------------------------------------------------------------------------------------
# outputs together or not at all


def test_outputs_appear_together_or_not_at_all(tmp_path, capsys, tiny_model_dir, pool, targets,
                                               monkeypatch):
    from trim_fast.run import outputs

    out = tmp_path / "out"
    ok(capsys, *_select(tmp_path, tiny_model_dir, pool, targets))
    before = {f: (out / f).read_bytes() for f in ("scores.parquet", "top_p0.05.jsonl", "summary.json")}

    def disk_full(cols, path, **kw):
        with outputs.atomic_open(path, "wb") as f:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "write_report", disk_full)
    text = refused(capsys, *_select(tmp_path, tiny_model_dir, pool, targets, "out", "--k", "3"))
    assert "No space left on device" in text and "report.png" in text
    assert not os.path.exists(out / "top_k3.jsonl")  # nothing new beside the old outputs
    assert {f: (out / f).read_bytes() for f in before} == before
    assert not [f for f in os.listdir(out) if f.startswith(".")]


# ---------------------------------------------------------------------------------------------
# errors a caller can tell apart


def test_error_hierarchy_through_the_library():
    from trim_fast.capture import CaptureUnsupportedError

    assert issubclass(trim_fast.DataError, trim_fast.TrimError)
    assert issubclass(trim_fast.DataError, ValueError)  # callers that caught ValueError still do
    assert issubclass(CaptureUnsupportedError, trim_fast.UnsupportedModelError)
    assert issubclass(CaptureUnsupportedError, RuntimeError)
    assert issubclass(trim_fast.HubUnavailableError, ConnectionError)
    with pytest.raises(trim_fast.DataError):
        open_records([{"text": "a"}, None]).count()
    with pytest.raises(trim_fast.ConfigError):
        open_records([{"text": "a"}], format="nope")
    with pytest.raises(trim_fast.ModelError):
        trim_fast.load_model("./no/such/model")
    sel = object.__new__(trim_fast.Selector)  # no model needed to refuse an empty bank set
    sel.config, sel.tokenizer = trim_fast.SelectionConfig(), None
    with pytest.raises(trim_fast.BankMismatchError):
        sel.check_banks({})
    import ast

    src = open(os.path.join(os.path.dirname(trim_fast.__file__), "errors.py")).read()
    imports = [n for n in ast.walk(ast.parse(src)) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(getattr(n, "module", None) == "__future__" for n in imports)  # the lowest layer


def test_cli_exit_codes_tell_errors_apart(tmp_path, capsys, monkeypatch, no_model, pool, targets):
    from trim_fast import cli as cli_module

    rc, text = cli(capsys, "pick", "--scores", tmp_path / "none.parquet", "--pool", pool,
                   "--out", tmp_path / "o")
    assert rc == 2 and "Traceback" not in text and len(text.strip().splitlines()) == 1

    def bug(values):
        raise RuntimeError("CUDA out of memory (a bug or a fault, not a user mistake)")

    monkeypatch.setitem(cli_module.COMMANDS, "pick", bug)
    with pytest.raises(RuntimeError):  # python -m trim_fast: its traceback, exit status 1
        main(["pick", "--scores", "x", "--pool", pool, "--out", str(tmp_path / "o")])

    def interrupted(values):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli_module.COMMANDS, "pick", interrupted)
    rc, text = cli(capsys, "pick", "--scores", "x", "--pool", pool, "--out", tmp_path / "o")
    assert rc == 130 and text.strip() == "trim-fast pick: interrupted"


# ---------------------------------------------------------------------------------------------
# weak cases


def test_config_file_k_fraction_and_library_bool_k_are_refused(tmp_path, capsys, no_model, pool,
                                                                targets):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"k": 2.7}))
    text = refused(capsys, *_select(tmp_path, "unused", pool, targets), "--config", cfg)
    assert "2.7" in text
    with pytest.raises(trim_fast.ConfigError, match="whole number"):
        trim_fast.Selector(object(), config=trim_fast.SelectionConfig(k=True))


@pytest.mark.parametrize("flags", [("--w-row", "0", "--w-col", "0"),
                                   ("--w-mean", "0", "--w-max", "0", "--w-coverage", "0")])
def test_zero_weights_are_refused_before_the_model(tmp_path, capsys, no_model, pool, targets, flags):
    text = refused(capsys, *_select(tmp_path, "unused", pool, targets), *flags)
    assert "0" in text and "weight" in text


def test_layers_above_the_model_are_clipped_and_recorded(tmp_path, capsys, tiny_model_dir, pool,
                                                         targets):
    text = ok(capsys, *_select(tmp_path, tiny_model_dir, pool, targets), "--layers", "1000")
    assert "layers=1000 but the model has 3 layers" in text
    with open(tmp_path / "out" / "summary.json") as f:
        assert json.load(f)["config"]["layers"] == 3


def test_a_glob_reaching_out_is_refused(tmp_path, capsys, no_model, targets):
    data = tmp_path / "data"
    data.mkdir()
    _write_jsonl(data / "p.jsonl", _chats(6))
    (data / "run").mkdir()
    _write_jsonl(data / "run" / "top_p0.05.jsonl", _chats(2, "old"))
    text = refused(capsys, "select", "--model", "unused", "--pool", f"{data}/**/*.jsonl",
                   "--targets", targets, "--out", data / "run", "--no-progress")
    assert "inside --out" in text


def test_list_items_that_are_not_records_are_named():
    with pytest.raises(trim_fast.DataError, match="item 1"):
        open_records([{"text": "a"}, None])
    with pytest.raises(trim_fast.DataError, match="list of records"):
        open_records(["Convert 2 km to meters.", "What is 2 + 2?"])


def test_a_corrupted_score_shard_of_the_same_size_is_redone(tmp_path, capsys, tiny_model_dir,
                                                            pool, targets):
    import glob

    ok(capsys, *_select(tmp_path, tiny_model_dir, pool, targets, "clean", "--chunk-size", "5"))
    ok(capsys, *_select(tmp_path, tiny_model_dir, pool, targets, "out", "--chunk-size", "5"))
    shard = sorted(glob.glob(str(tmp_path / "out" / "work" / "scores" / "*.safetensors")))[1]
    data = bytearray(open(shard, "rb").read())
    data[-3] ^= 0x40  # a score's bits flipped in place: same size, same header
    open(shard, "wb").write(bytes(data))
    text = ok(capsys, *_select(tmp_path, tiny_model_dir, pool, targets, "out", "--chunk-size", "5"))
    assert "does not match its checksum" in text
    assert pq.read_table(tmp_path / "out" / "scores.parquet").equals(
        pq.read_table(tmp_path / "clean" / "scores.parquet"))


@pytest.mark.parametrize("field", ["image", "audio", "video"])
def test_singular_media_fields_are_refused_like_the_plurals(tmp_path, field):
    recs = _chats(2)
    recs[1][field] = "cat.png"
    with pytest.raises(trim_fast.DataError, match=f"field '{field}' holds media"):
        open_records(_write_jsonl(tmp_path / "p.jsonl", recs)).count()


def test_nothing_selected_is_a_failed_run_with_its_table(tmp_path, capsys, tiny_model_dir, targets):
    rows = [{"id": f"t{i}", "input_ids": [5, 6, 7, 8 + i], "labels": [-100] * 4} for i in range(6)]
    path = _write_jsonl(tmp_path / "tok.jsonl", rows)
    text = refused(capsys, *_select(tmp_path, tiny_model_dir, path, targets, "out", "--k", "2",
                                           "--center", "none"))
    assert "nothing selected" in text
    assert os.path.exists(tmp_path / "out" / "scores.parquet")


def test_a_second_thread_on_one_selector_is_refused_clearly():
    import threading

    sel = object.__new__(trim_fast.Selector)  # no model needed to refuse an empty bank set
    sel.config, sel.tokenizer = trim_fast.SelectionConfig(), None
    entered, release = threading.Event(), threading.Event()

    def hold():
        with sel._calls():
            entered.set()
            release.wait(10)

    sel.score.__wrapped__  # the guard wraps the public calls
    from trim_fast.api import _OneThread

    sel._calls = _OneThread()
    t = threading.Thread(target=hold)
    t.start()
    entered.wait(10)
    try:
        with pytest.raises(trim_fast.ConfigError, match="another thread"):
            sel.score([{"text": "a"}], {})
    finally:
        release.set()
        t.join()


def test_max_length_too_short_for_any_counted_token_is_one_line(tmp_path, capsys, tiny_model_dir,
                                                                pool, targets):
    text = refused(capsys, *_select(tmp_path, tiny_model_dir, pool, targets), "--max-length", "2")
    assert "max_length=2" in text


_DNS_FAILING_CLI = """
import socket, sys, time
def no_dns(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
socket.getaddrinfo = no_dns
from trim_fast.cli import main
t0 = time.monotonic()
rc = main(sys.argv[1:])
sys.stderr.write(f"RC {rc} SECONDS {time.monotonic() - t0:.1f}\\n")
sys.exit(rc)
"""


def test_hub_with_dns_failing_gives_up_after_a_few_requests(tmp_path, pool, targets):
    """Each request fails at once, so the 30 s no-answer bound never came: huggingface_hub's
    retries ran for 32 s. Now no request is made after 4 unanswered ones (defaults kept)."""
    import subprocess
    import sys

    env = dict(os.environ, HF_ENDPOINT="http://hub.example.invalid", HF_HUB_OFFLINE="0")
    proc = subprocess.run([sys.executable, "-c", _DNS_FAILING_CLI, "select", "--model",
                           "some-org/some-model", "--pool", pool, "--targets", targets, "--out",
                           str(tmp_path / "out"), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=120)
    err = proc.stderr
    assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert "did not answer" in err, err[-3000:]
    assert float(err.split("RC 2 SECONDS ")[1].split()[0]) < 15, err[-3000:]
