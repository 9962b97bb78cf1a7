"""Issue 15: the catalogue of bad inputs and faults, each case a test (docs/RELIABILITY.md).

Tiny models and small files only; the CLI runs in-process through ``trim_fast.cli.main``, except
where a real process is the point (``kill -9``; a hub endpoint that never answers, since
huggingface_hub reads ``HF_ENDPOINT`` at import). The first five tests assert the right scores or
the refusal itself, not just an exit status. ``no_model`` fails a test if a model or tokenizer is
loaded, which is how "checked before the model loads" is asserted.
"""
from __future__ import annotations

import glob
import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import trim_fast
from trim_fast.cli import main
from lora import make_adapter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(trim_fast.__file__)))
VOCAB = 49152  # the SmolLM2 tokenizer the tiny models share


# ---------------------------------------------------------------------------------------------
# helpers and fixtures


@pytest.fixture(autouse=True)
def _fresh_cli_logging():
    """The CLI's log handler binds ``sys.stderr`` when first created; make a new one per test so
    its messages land in this test's capture."""
    def drop():
        lg = logging.getLogger("trim_fast")
        for h in [h for h in lg.handlers if getattr(h, "_trim_fast_cli", False)]:
            lg.removeHandler(h)
    drop()
    yield
    drop()


def cli(capsys, *argv) -> tuple[int, str]:
    """Run ``trim-fast ARGV`` in-process: (exit status, everything it printed)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def ok(capsys, *argv) -> str:
    rc, text = cli(capsys, *argv)
    assert rc == 0, text[-3000:]
    return text


def refused(capsys, *argv) -> str:
    """The command fails with a message (exit 2), never a traceback."""
    rc, text = cli(capsys, *argv)
    assert rc == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    return text


def _refuse_loading(monkeypatch) -> None:
    from trim_fast.models import loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the inputs were checked")

    for name in ("load_model", "load_tokenizer", "load_causal_lm"):
        monkeypatch.setattr(loading, name, refuse)


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model or tokenizer fails the test: what is checked here is checked first."""
    _refuse_loading(monkeypatch)


@pytest.fixture
def pool(demo_data):
    """One JSONL file of 30 chats (six chunks of 5)."""
    return next(p for p in demo_data["pool"] if p.endswith("pool_chat.jsonl"))


@pytest.fixture
def targets(demo_data):
    return demo_data["targets"]["arithmetic"]


@pytest.fixture(scope="module")
def bank(tiny_model_dir, demo_data, tmp_path_factory):
    """A bank of the tiny model for the arithmetic targets."""
    out = tmp_path_factory.mktemp("fp")
    assert main(["fingerprint", "--model", tiny_model_dir, "--targets",
                 demo_data["targets"]["arithmetic"], *sum((["--pool", p] for p in demo_data["pool"]), []),
                 "--out", str(out), "--no-progress"]) == 0
    return str(out / "banks" / "arithmetic.safetensors")


def _write_jsonl(path, records) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def _chats(n: int, prefix: str = "r") -> list[dict]:
    return [{"id": f"{prefix}{i}", "messages": [
        {"role": "user", "content": f"Convert {i + 2} kilometers to meters."},
        {"role": "assistant", "content": f"{i + 2} km = {(i + 2) * 1000} m."}]} for i in range(n)]


def _table(out) -> pa.Table:
    return pq.read_table(os.path.join(out, "scores.parquet"))


def _summary(out) -> dict:
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def _same_outputs(a, b) -> None:
    """Two runs wrote the same score table and the same coreset, bit for bit."""
    ta, tb = _table(a), _table(b)
    assert ta.equals(tb), (ta.to_pylist()[:3], tb.to_pylist()[:3])
    for name in ("sorted.csv", "top_p0.05.jsonl"):
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name


def _score_of(out, rid: str) -> float:
    return next(r["score"] for r in _table(out).to_pylist() if r["id"] == rid)


def _edit_line_in_place(path: str, line_no: int, record: dict) -> None:
    """Replace line ``line_no`` with ``record``, padded with JSON whitespace (or its last message
    cut) to the old byte length, and put the old modification time back: what ``cp -p`` or
    ``rsync -t`` of an edited file leaves. Size and mtime cannot tell the difference."""
    st = os.stat(path)
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    old = lines[line_no - 1]
    record = json.loads(json.dumps(record))
    new = json.dumps(record).encode()
    while len(new) > len(old):
        last = record["messages"][-1]
        last["content"] = last["content"][: -(len(new) - len(old))]
        new = json.dumps(record).encode()
    new = b"{" + b" " * (len(old) - len(new)) + new[1:]
    assert len(new) == len(old) and new != old and json.loads(new) == record
    lines[line_no - 1] = new
    with open(path, "r+b") as f:  # in place: same inode, same size
        f.write(b"\n".join(lines))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


ARITHMETIC = {"id": "pool-000000", "family": "arithmetic", "messages": [
    {"role": "user", "content": "Mira had 64 cookies and gave 21 to a friend. How many are left?"},
    {"role": "assistant", "content": "Mira had 64 cookies. Giving away 21 leaves 64 - 21 = 43."}]}


def _subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def _overwrite_weights(model_dir: str, seed: int) -> None:
    """Other random weights saved over ``model_dir``'s (the tokenizer stays)."""
    from transformers import AutoModelForCausalLM

    from trim_fast.models.tiny import tiny_config

    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(model_dir)


# =============================================================================================
# 1-5: wrong results or hangs
# =============================================================================================

# A CLI whose scoring waits before each chunk, so that a kill -9 lands after a known shard.
_SLOW_CLI = textwrap.dedent("""
    import sys, time
    import trim_fast.scoring.engine as engine
    _score_chunk = engine.score_chunk
    def slow(*args, **kwargs):
        time.sleep(float(sys.argv[1]))
        return _score_chunk(*args, **kwargs)
    engine.score_chunk = slow
    from trim_fast.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def test_1_inplace_edit_after_kill9_gives_the_clean_table(tmp_path, capsys, tiny_model_dir, pool,
                                                          targets):
    """kill -9 after 3 shards of ``select --chunk-size 5``; line 1 replaced by a record of the
    same byte length, mtime restored; the rerun's table is the clean run's on the edited file."""
    data = tmp_path / "pool.jsonl"
    shutil.copy(pool, data)
    out, clean = tmp_path / "out", tmp_path / "clean"
    args = ["select", "--model", tiny_model_dir, "--pool", data, "--targets", targets,
            "--chunk-size", "5", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, "1.0", *map(str, args), "--out", str(out)],
                            env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    shards = str(out / "work" / "scores" / "chunk-*.safetensors")
    deadline = time.monotonic() + 90
    try:
        while len(glob.glob(shards)) < 3:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no third shard in 90 s"
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no cleanup, no atexit
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -9
    assert len(glob.glob(shards)) == 3 and not (out / "scores.parquet").exists()
    from safetensors.torch import load_file

    stale = float(load_file(str(out / "work" / "scores" / "chunk-000000.safetensors"))["score"][0, 0])

    _edit_line_in_place(str(data), 1, ARITHMETIC)
    ok(capsys, *args, "--out", out)      # the resumed run
    ok(capsys, *args, "--out", clean)    # a clean run on the edited file
    _same_outputs(out, clean)
    # the stale shard would have given another score: the comparison above can fail
    assert abs(_score_of(clean, "pool-000000") - stale) > 1e-3, stale
    # the pool IDF enters every shard, and the pool's content changed: every shard was redone
    assert _summary(out)["scoring"]["chunks_reused"] == 0


def test_1b_inplace_edit_redoes_only_the_chunk_it_touches(tmp_path, capsys, tiny_model_dir, pool,
                                                          targets):
    """Without the pool IDF and the pool's mean state (which an edit of a sampled record moves,
    re-scoring every chunk), a shard depends on its own chunk only: after a same-size,
    same-mtime edit of line 1, chunk 0 is redone and the five others are reused; the table is
    the clean one."""
    data = tmp_path / "pool.jsonl"
    shutil.copy(pool, data)
    args = ["select", "--model", tiny_model_dir, "--pool", data, "--targets", targets,
            "--chunk-size", "5", "--idf", "none", "--center", "none", "--no-progress"]
    ok(capsys, *args, "--out", tmp_path / "out")
    before = _score_of(tmp_path / "out", "pool-000000")
    _edit_line_in_place(str(data), 1, ARITHMETIC)
    ok(capsys, *args, "--out", tmp_path / "out")
    assert _summary(tmp_path / "out")["scoring"]["chunks_reused"] == 5
    ok(capsys, *args, "--out", tmp_path / "clean")
    _same_outputs(tmp_path / "out", tmp_path / "clean")
    assert abs(_score_of(tmp_path / "clean", "pool-000000") - before) > 1e-3


def test_2_overwritten_weights_refuse_the_old_bank_and_the_old_run(tmp_path, monkeypatch, capsys,
                                                                   tiny_model_dir, pool, targets):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, "models/tiny2")
    bank = "fp/banks/arithmetic.safetensors"
    ok(capsys, "fingerprint", "--model", "models/tiny2", "--targets", targets, "--pool", pool,
       "--out", "fp", "--no-progress")
    score = ["score", "--bank", bank, "--model", "models/tiny2", "--pool", pool, "--no-progress",
             "--out", "sc"]
    ok(capsys, *score)
    run = ["select", "--model", "models/tiny2", "--pool", pool, "--targets", targets, "--no-progress",
           "--out", "run"]
    ok(capsys, *run)
    tables_before = _table("sc"), _table("run")

    _overwrite_weights("models/tiny2", seed=1)  # same directory, same names, other weights
    # the old bank, into the old --out: neither the bank nor the old model's shards are taken
    text = refused(capsys, *score)
    assert "bank 'arithmetic' was built with model 'models/tiny2' (weights digest" in text
    assert "rebuild the bank with this model" in text
    text = refused(capsys, *run)  # banks rebuilt with the new weights, into the old --out
    assert "holds another run (different model: " in text, text
    assert "different model: 'models/tiny2' with weights digest w1:" in text and " in this run" in text
    assert (_table("sc"), _table("run")) == tables_before  # and nothing was overwritten
    # the refusals guard a real difference: the bank's digest is not the new weights'
    from trim_fast.bank import FingerprintBank
    from trim_fast.models.digest import weights_digest
    from trim_fast.models.loading import load_model

    built = FingerprintBank.load(bank).meta["model"]["digest"]
    assert built != weights_digest(load_model("models/tiny2", device="cpu"))


def test_2_spellings_of_one_model_directory_are_one_model(tmp_path, monkeypatch, capsys,
                                                          tiny_model_dir, pool, targets):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, "models/tiny2")
    absolute = os.path.join(str(tmp_path), "models", "tiny2")
    ok(capsys, "fingerprint", "--model", "./models/tiny2", "--targets", targets, "--pool", pool,
       "--out", "fp", "--no-progress")
    ok(capsys, "score", "--bank", "fp/banks/arithmetic.safetensors", "--model", "models/tiny2",
       "--pool", pool, "--out", "sc", "--no-progress")
    run = ["select", "--pool", pool, "--targets", targets, "--no-progress", "--out", "run"]
    ok(capsys, *run, "--model", "./models/tiny2")
    first = _table("run")
    ok(capsys, *run, "--model", absolute)  # the same --out: not "a different model"
    assert _table("run").equals(first)


def test_2_another_spelling_reuses_every_shard(tmp_path, monkeypatch, capsys, tiny_model_dir, pool,
                                               targets):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, "models/tiny2")
    shutil.copy(pool, "pool.jsonl")
    run = ["select", "--targets", targets, "--no-progress", "--out", "run"]
    ok(capsys, *run, "--model", "models/tiny2", "--pool", "pool.jsonl")
    ok(capsys, *run, "--model", os.path.abspath("models/tiny2"), "--pool", "./pool.jsonl")
    assert _summary("run")["scoring"]["chunks_reused"] == 1


def test_2_bank_of_an_overwritten_or_missing_adapter_is_refused(tmp_path, capsys, tiny_model_dir,
                                                                  pool, targets):
    lora = make_adapter(tiny_model_dir, str(tmp_path / "lora"), seed=1)
    ok(capsys, "fingerprint", "--model", tiny_model_dir, "--adapter", lora, "--targets", targets,
       "--pool", pool, "--out", tmp_path / "fp", "--no-progress")
    score = ["score", "--bank", tmp_path / "fp" / "banks" / "arithmetic.safetensors", "--model",
             tiny_model_dir, "--pool", pool, "--no-progress", "--out", tmp_path / "sc"]
    ok(capsys, *score, "--adapter", lora)
    assert "weights digest" in refused(capsys, *score)  # without the adapter
    make_adapter(tiny_model_dir, lora, seed=2)  # other adapter weights, same directory
    assert "weights digest" in refused(capsys, *score, "--adapter", lora)


def test_3_banks_of_different_scope_are_refused_in_either_order(tmp_path, capsys, monkeypatch,
                                                                tiny_model_dir, demo_data, pool):
    t = demo_data["targets"]
    ok(capsys, "fingerprint", "--model", tiny_model_dir, "--targets", t["arithmetic"], "--scope",
       "all", "--pool", pool, "--out", tmp_path / "a", "--no-progress")
    ok(capsys, "fingerprint", "--model", tiny_model_dir, "--targets", t["list_sorting"], "--scope",
       "response", "--pool", pool, "--out", tmp_path / "b", "--no-progress")
    a = tmp_path / "a" / "banks" / "arithmetic.safetensors"
    b = tmp_path / "b" / "banks" / "list_sorting.safetensors"
    with monkeypatch.context() as m:  # refused from the banks' headers, before any model loads
        _refuse_loading(m)
        for first, second, pair in ((a, b, "scope: 'all' vs 'response'"),
                                    (b, a, "scope: 'response' vs 'all'")):
            text = refused(capsys, "score", "--bank", first, "--bank", second, "--model",
                           tiny_model_dir, "--pool", pool, "--out", tmp_path / "sc", "--no-progress")
            assert "were built with different settings" in text and pair in text, text
    assert not (tmp_path / "sc" / "scores.parquet").exists()
    # the library refuses them too
    from trim_fast import Selector
    from trim_fast.bank import FingerprintBank

    sel = Selector(tiny_model_dir)
    with pytest.raises(ValueError, match="different settings.*scope"):
        sel.score(pool, [FingerprintBank.load(str(a)), FingerprintBank.load(str(b))])


def test_3_score_flag_contradicting_the_banks_is_refused(tmp_path, capsys, monkeypatch,
                                                         tiny_model_dir, pool, targets):
    ok(capsys, "fingerprint", "--model", tiny_model_dir, "--targets", targets, "--max-length", "40",
       "--pool", pool, "--out", tmp_path / "fp", "--no-progress")
    bank40 = tmp_path / "fp" / "banks" / "arithmetic.safetensors"
    score = ["score", "--bank", bank40, "--model", tiny_model_dir, "--pool", pool, "--no-progress"]
    with monkeypatch.context() as m:  # refused from the bank's header, before any model loads
        _refuse_loading(m)
        text = refused(capsys, *score, "--max-length", "2048", "--out", tmp_path / "sc")
        assert "--max-length 2048 contradicts the banks, built with max_length=40" in text
        text = refused(capsys, *score, "--scope", "response", "--out", tmp_path / "sc")
        assert "--scope response contradicts the banks, built with scope='all'" in text
        (tmp_path / "run.yaml").write_text("max-length: 2048\n")
        text = refused(capsys, *score, "--config", tmp_path / "run.yaml", "--out", tmp_path / "sc")
        assert "contradicts the banks" in text
    # without the flag (or with the banks' own value) the banks' settings apply
    ok(capsys, *score, "--out", tmp_path / "sc")
    ok(capsys, *score, "--max-length", "40", "--out", tmp_path / "sc40")
    assert _summary(tmp_path / "sc")["config"]["max_length"] == 40
    rows = _table(tmp_path / "sc").to_pylist()
    assert max(r["n_tokens"] for r in rows) == 40 and _summary(tmp_path / "sc")["truncated"] > 0
    assert _table(tmp_path / "sc").equals(_table(tmp_path / "sc40"))


_SURROGATE_CASES = {
    # where: (file name, record at line 3, text naming the place)
    "chat content": ("pool.jsonl", {"messages": [{"role": "user", "content": "a\ud800b"},
                                                 {"role": "assistant", "content": "ok"}]},
                     "'content' of turn 0 of 'messages' holds '\\ud800'"),
    "alpaca output": ("pool.jsonl", {"instruction": "x", "input": "", "output": "\ud800"},
                      "field 'output' holds '\\ud800'"),
    "an extra field": ("pool.jsonl", {"note": "\ud800", "messages": _chats(1)[0]["messages"]},
                       "'note' holds '\\ud800'"),
    "the id": ("pool.jsonl", {"id": "r\ud800", "messages": _chats(1)[0]["messages"]},
               "'id' holds '\\ud800'"),
    "a target": ("targets.jsonl", {"messages": [{"role": "user", "content": "\ud800"},
                                                {"role": "assistant", "content": "ok"}]},
                 "holds '\\ud800'"),
}


@pytest.mark.parametrize("where", list(_SURROGATE_CASES))
def test_4_lone_surrogate_is_a_data_error_before_the_model_loads(where, tmp_path, capsys, no_model,
                                                                  tiny_model_dir):
    name, record, place = _SURROGATE_CASES[where]
    fmt = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(4)] \
        if "instruction" in record else [{"messages": c["messages"]} for c in _chats(4)]
    files = {"pool.jsonl": fmt, "targets.jsonl": [{"messages": c["messages"]} for c in _chats(4)]}
    files[name] = files[name][:2] + [record] + files[name][2:]
    paths = {n: _write_jsonl(tmp_path / n, recs) for n, recs in files.items()}
    text = refused(capsys, "select", "--model", tiny_model_dir, "--pool", paths["pool.jsonl"],
                   "--targets", paths["targets.jsonl"], "--out", tmp_path / "out", "--no-progress")
    assert f"{paths[name]}:3: " in text and place in text and "lone surrogate" in text, text
    assert not os.path.exists(tmp_path / "out" / "work" / "manifest.json")


def test_4_lone_surrogate_through_the_library(tiny_model_dir):
    from trim_fast import Selector
    from trim_fast.data import DataError
    from trim_fast.models.loading import load_model, load_tokenizer

    sel = Selector(load_model(tiny_model_dir, device="cpu"), load_tokenizer(tiny_model_dir))
    pool = [{"messages": c["messages"]} for c in _chats(3)]
    bad = {"messages": [{"role": "user", "content": "x\ud800"}, {"role": "assistant", "content": "y"}]}
    with pytest.raises(DataError, match=r"records:4: .*lone surrogate"):
        sel.select(pool + [bad], pool, k=1)
    with pytest.raises(DataError, match=r"records:2: field 'meta' holds '\\ud800'"):
        sel.score([pool[0], dict(pool[1], meta="\ud800")], sel.fingerprint(pool, pool=pool))


_SILENT_HUB_CLI = textwrap.dedent("""
    import socket, sys, time
    import trim_fast.hub as H
    H.HUB_TIMEOUT_S, H.HUB_NO_ANSWER_S = 1.0, 3.0   # the defaults (10 s, 30 s) give up in ~35 s
    _connect = socket.socket.connect
    def connect(self, address):
        sys.stderr.write(f"CONNECT {address}\\n")
        return _connect(self, address)
    socket.socket.connect = connect
    from trim_fast.cli import main
    t0 = time.monotonic()
    rc = main(sys.argv[1:])
    sys.stderr.write(f"RC {rc} SECONDS {time.monotonic() - t0:.1f}\\n")
    sys.exit(rc)
""")


@pytest.mark.parametrize("what", ["model", "dataset"])
def test_5_silent_hub_endpoint_fails_within_a_bound_and_says_so_first(what, tmp_path, pool, targets,
                                                                      silent_hub, tiny_model_dir):
    """An endpoint that accepts connections and never answers: ``select --model ORG/NAME`` (and
    ``--pool ORG/NAME``, a hub dataset) fails in bounded time with a clear error, and said before
    its first connection that it was about to use the network, for what, and where."""
    endpoint, accepted, env = silent_hub.endpoint, silent_hub.accepted, silent_hub.env
    if what == "model":
        args = ["--model", "some-org/some-model", "--pool", pool]
        said = f"using the network: fetching tokenizer 'some-org/some-model' from {endpoint}"
    else:
        args = ["--model", tiny_model_dir, "--pool", "some-org/some-data", "--split", "train"]
        said = (f"using the network: streaming split 'train' of the Hugging Face hub dataset "
                f"'some-org/some-data' from {endpoint}")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _SILENT_HUB_CLI, "select", *args, "--targets",
                           targets, "--out", str(tmp_path / "out"), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=120)
    err = proc.stderr
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    seconds = float(err.split("RC 2 SECONDS ")[1].split()[0])
    assert seconds < 15, err[-3000:]  # bounded: 3 s without an answer, plus the last request
    assert time.monotonic() - t0 < 60
    assert accepted, "the requests must have reached the silent endpoint"
    assert err.index(said) < err.index("CONNECT ('127.0.0.1'"), err[-3000:]
    assert f"the hub at {endpoint} did not answer" in err and "HF_HUB_OFFLINE=1" in err
    assert not os.path.exists(tmp_path / "out" / "work" / "manifest.json")


# =============================================================================================
# unclear or surprising: a clear message or the expected behaviour
# =============================================================================================


def test_non_utf8_bytes_name_file_line_and_byte(tmp_path, capsys, no_model, targets):
    good = "".join(json.dumps(r) + "\n" for r in _chats(2)).encode()
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(good + '{"text": "café"}\n'.encode("latin-1"))
    text = refused(capsys, "select", "--pool", bad, "--targets", targets, "--out", tmp_path / "o")
    assert f"{bad}:3: not UTF-8 text: byte 0xe9 at byte 13 of the line" in text, text


def test_gzip_named_jsonl_is_named_for_what_it_is(tmp_path, capsys, no_model, targets):
    gz = tmp_path / "pool.jsonl"
    gz.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in _chats(3)).encode()))
    text = refused(capsys, "select", "--pool", gz, "--targets", targets, "--out", tmp_path / "o")
    assert f"{gz}: looks gzip-compressed; name it pool.jsonl.gz" in text, text


@pytest.mark.parametrize("flag,name,message", [
    ("--model", "models/tiny2", "--model models/tiny2: no such directory"),
    ("--model", "./tiny2", "--model ./tiny2: no such directory"),
    ("--model", "../x/tiny2", "--model ../x/tiny2: no such directory"),
    ("--model", "tiny2.gguf", "--model tiny2.gguf: GGUF file not found"),
    ("--adapter", "my_adapter", "--adapter my_adapter: no such directory"),
    ("--adapter", "models/lora", "--adapter models/lora: no such directory"),
])
def test_missing_relative_model_or_adapter_is_no_such_directory_offline(
        flag, name, message, tmp_path, monkeypatch, capsys, no_network, tiny_model_dir, pool, targets):
    monkeypatch.chdir(tmp_path)
    os.mkdir("models")  # 'models/tiny2' has an existing first component: a path, not a hub id
    model = [] if flag == "--model" else ["--model", tiny_model_dir]
    t0 = time.monotonic()
    text = refused(capsys, "select", *model, flag, name, "--pool", pool, "--targets", targets,
                   "--out", "o", "--no-progress")
    assert message in text and "using the network" not in text, text
    assert time.monotonic() - t0 < 10


def test_local_adapter_loads_without_network(tmp_path, capsys, no_network, tiny_model_dir, pool,
                                             targets):
    lora = make_adapter(tiny_model_dir, str(tmp_path / "lora"), seed=3)
    ok(capsys, "select", "--model", tiny_model_dir, "--adapter", lora, "--pool", pool, "--targets",
       targets, "--out", tmp_path / "o", "--no-progress")


def test_failed_run_does_not_block_its_out(tmp_path, capsys, tiny_model_dir, targets):
    recs = _chats(12)
    lines = [json.dumps(r) for r in recs]
    lines[9] = '{"id": "r9", "messages": oops}'
    data = tmp_path / "pool.jsonl"
    data.write_text("\n".join(lines) + "\n")
    cmd = ["select", "--model", tiny_model_dir, "--pool", data, "--targets", targets,
           "--chunk-size", "4", "--out", tmp_path / "o", "--no-progress"]
    assert f"{data}:10: malformed JSON" in refused(capsys, *cmd)
    assert not os.path.exists(tmp_path / "o" / "work" / "manifest.json")
    _write_jsonl(data, recs)  # the bad line fixed: the same command runs
    ok(capsys, *cmd)
    assert _summary(tmp_path / "o")["pool_size"] == 12


def test_bank_class_id_above_the_vocabulary_is_refused(tmp_path, capsys, tiny_model_dir, bank, pool):
    from trim_fast import Selector
    from trim_fast.bank import FingerprintBank
    from trim_fast.models.loading import load_model, load_tokenizer

    good = FingerprintBank.load(bank)
    classes = good.classes.clone()
    classes[-1] = VOCAB + 5
    FingerprintBank(classes, good.vectors, good.counts, good.mass, dict(good.meta),
                    good.center).save(str(tmp_path / "bad.safetensors"))
    text = refused(capsys, "score", "--bank", tmp_path / "bad.safetensors", "--model", tiny_model_dir,
                   "--pool", pool, "--out", tmp_path / "o", "--no-progress")
    assert f"holds token id {VOCAB + 5}, outside the tokenizer's vocabulary of {VOCAB}" in text
    sel = Selector(load_model(tiny_model_dir, device="cpu"), load_tokenizer(tiny_model_dir))
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        sel.score([{"text": "a b c"}], FingerprintBank.load(str(tmp_path / "bad.safetensors")))


@pytest.mark.parametrize("turn,message", [
    ({"role": "assistant"}, "turn 1 of 'messages' (assistant) has no 'content'"),
    ({"role": "assistant", "content": None}, "turn 1 of 'messages' (assistant) has a null 'content'"),
])
def test_missing_or_null_content_is_a_data_error(turn, message, tmp_path, capsys, no_model, targets):
    recs = _chats(3)
    recs[1]["messages"][1] = turn
    data = _write_jsonl(tmp_path / "pool.jsonl", recs)
    text = refused(capsys, "select", "--pool", data, "--targets", targets, "--out", tmp_path / "o")
    assert f"{data}:2: {message}" in text, text


def test_null_alpaca_field_is_a_data_error(tmp_path, capsys, no_model, targets):
    data = _write_jsonl(tmp_path / "pool.jsonl", [{"instruction": "a", "input": "", "output": "b"},
                                                 {"instruction": "c", "input": "", "output": None}])
    text = refused(capsys, "select", "--pool", data, "--targets", targets, "--out", tmp_path / "o")
    assert f"{data}:2: field 'output' is null; it must be a string" in text, text


def test_identical_records_without_ids_are_warned_about(tmp_path, capsys, caplog, tiny_model_dir,
                                                        targets):
    same = {"messages": _chats(1)[0]["messages"]}
    data = _write_jsonl(tmp_path / "pool.jsonl", [same, same, same] + [
        {"messages": c["messages"]} for c in _chats(5, "x")[1:]])
    caplog.set_level(logging.WARNING, logger="trim_fast")
    ok(capsys, "select", "--model", tiny_model_dir, "--pool", data, "--targets", targets, "--k", "3",
       "--out", tmp_path / "o", "--no-progress")
    warned = [r.getMessage() for r in caplog.records if "exact copies" in r.getMessage()]
    assert warned and warned[0].startswith(f"2 pool record(s) are exact copies of earlier ones "
                                           f"(e.g. {data}:2 = {data}:1)"), warned


def test_k_zero_is_refused_before_the_model_loads(tmp_path, capsys, no_model, pool, targets):
    for cmd in (["select", "--targets", targets], ["pick", "--scores", tmp_path / "none.parquet"]):
        text = refused(capsys, *cmd, "--pool", pool, "--k", "0", "--out", tmp_path / "o")
        assert "k must be >= 1" in text, text
    assert not glob.glob(str(tmp_path / "o" / "top_*"))


def test_k_above_the_pool_size_keeps_the_pool_with_a_warning(tmp_path, capsys, caplog,
                                                             tiny_model_dir, pool, targets):
    caplog.set_level(logging.WARNING, logger="trim_fast")
    ok(capsys, "select", "--model", tiny_model_dir, "--pool", pool, "--targets", targets, "--k", "100",
       "--out", tmp_path / "o", "--no-progress")
    assert any("k=100 is more than the pool's 30 examples: the whole pool is kept" in r.getMessage()
               for r in caplog.records)
    assert _summary(tmp_path / "o")["selected"] == 30
    with open(tmp_path / "o" / "top_k100.jsonl") as f:
        assert len(f.readlines()) == 30
    caplog.clear()  # the pick stage says so too
    ok(capsys, "pick", "--scores", tmp_path / "o" / "scores.parquet", "--pool", pool, "--k", "100",
       "--out", tmp_path / "p")
    assert any("k=100 is more than the pool's 30 examples" in r.getMessage() for r in caplog.records)


def test_json_array_and_upper_case_suffix_are_read(tmp_path, capsys, tiny_model_dir, targets):
    arr = tmp_path / "pool.json"
    arr.write_text(json.dumps(_chats(4, "a"), indent=1))
    upper = tmp_path / "MORE.JSONL"
    _write_jsonl(upper, _chats(4, "u"))
    ok(capsys, "select", "--model", tiny_model_dir, "--pool", arr, "--pool", upper, "--targets",
       targets, "--k", "2", "--out", tmp_path / "o", "--no-progress")
    assert _summary(tmp_path / "o")["pool_size"] == 8


def test_directory_and_unknown_suffix_say_what_is_supported(tmp_path, capsys, no_model, targets):
    (tmp_path / "shards").mkdir()
    text = refused(capsys, "select", "--pool", tmp_path / "shards", "--targets", targets, "--out",
                   tmp_path / "o")
    assert "is a directory but not a datasets save_to_disk folder" in text
    assert os.path.join(str(tmp_path / "shards"), "*.jsonl") in text  # the glob to pass instead
    (tmp_path / "pool.csv").write_text("a,b\n")
    text = refused(capsys, "select", "--pool", tmp_path / "pool.csv", "--targets", targets, "--out",
                   tmp_path / "o")
    assert "pool.csv: unknown file type; supported: .jsonl, .json, .parquet, .jsonl.gz" in text


class _CodeInPickle:
    """Unpickling this runs ``print``: what a hostile ``pytorch_model.bin`` does with worse."""

    def __reduce__(self):
        return (print, ("PICKLE CODE RAN",))


@pytest.mark.parametrize("payload", ["state dict", "code"])
def test_pickled_weights_are_refused_with_the_reason(payload, tmp_path, capsys, monkeypatch,
                                                     tiny_model_dir, pool, targets):
    import pickle

    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    model.mkdir()
    for name in os.listdir(tiny_model_dir):
        if not name.endswith(".safetensors"):
            shutil.copy(os.path.join(tiny_model_dir, name), model)
    if payload == "state dict":
        torch.save(load_file(os.path.join(tiny_model_dir, "model.safetensors")),
                   model / "pytorch_model.bin")
    else:
        with open(model / "pytorch_model.bin", "wb") as f:
            pickle.dump({"model.embed_tokens.weight": _CodeInPickle()}, f)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called on a user file")

    monkeypatch.setattr(torch, "load", no_unpickling)
    text = refused(capsys, "select", "--model", model, "--pool", pool, "--targets", targets,
                   "--out", tmp_path / "o", "--no-progress")
    assert "the weights are pickled (pytorch_model.bin)" in text
    assert "never loads pickles from user files (unpickling can run code)" in text
    assert "save_pretrained(NEW_DIR)" in text  # and how to convert them
    assert "PICKLE CODE RAN" not in text


def _parquet_pool(path) -> list[dict]:
    rows = [{"id": f"p{i}", "instruction": f"Convert {i} km to m.", "input": "",
             "output": f"{i * 1000} m", "blob": bytes([0, 255, i]),
             "weight": float("nan") if i % 2 else 0.5 * i} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


def test_parquet_binary_and_nan_come_back_as_given(tmp_path, capsys, tiny_model_dir, targets):
    rows = _parquet_pool(tmp_path / "pool.parquet")
    ok(capsys, "select", "--model", tiny_model_dir, "--pool", tmp_path / "pool.parquet", "--targets",
       targets, "--k", "5", "--out", tmp_path / "o", "--no-progress")
    back = {r["id"]: r for r in pq.read_table(tmp_path / "o" / "top_k5.parquet").to_pylist()}
    assert pq.read_schema(tmp_path / "o" / "top_k5.parquet").field("blob").type == pa.binary()
    for r in rows:
        got = back[r["id"]]
        assert got["blob"] == r["blob"] and isinstance(got["blob"], bytes)
        if r["weight"] != r["weight"]:  # NaN stays NaN
            assert got["weight"] != got["weight"]
        else:
            assert got["weight"] == r["weight"]


def test_parquet_to_jsonl_is_strict_json_and_binary_is_refused_first(tmp_path, capsys, monkeypatch,
                                                                     tiny_model_dir, targets):
    _parquet_pool(tmp_path / "pool.parquet")
    cmd = ["select", "--model", tiny_model_dir, "--targets", targets, "--k", "5",
           "--output-format", "jsonl", "--no-progress"]
    # bytes cannot go into JSONL unchanged: refused before the model loads, naming the column
    with monkeypatch.context() as m:
        _refuse_loading(m)
        text = refused(capsys, *cmd, "--pool", tmp_path / "pool.parquet", "--out", tmp_path / "o")
    assert "column 'blob'" in text and "binary" in text and "--output-format parquet" in text, text
    # without the binary column: NaN is written as null, the file is strict JSON
    table = pq.read_table(tmp_path / "pool.parquet").drop_columns(["blob"])
    pq.write_table(table, tmp_path / "noblob.parquet")
    ok(capsys, *cmd, "--pool", tmp_path / "noblob.parquet", "--out", tmp_path / "o2")

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    with open(tmp_path / "o2" / "top_k5.jsonl") as f:
        back = {r["id"]: r for r in (json.loads(line, parse_constant=no_constants) for line in f)}
    assert back["p1"]["weight"] is None and back["p2"]["weight"] == 1.0
    assert "b'" not in (tmp_path / "o2" / "top_k5.jsonl").read_text()


def test_no_progress_draws_no_bar(tmp_path, capfd, tiny_model_dir, pool, targets):
    main(["select", "--model", tiny_model_dir, "--pool", pool, "--targets", targets, "--out",
          str(tmp_path / "o"), "--no-progress"])
    err = capfd.readouterr().err
    assert "it/s]" not in err and "%|" not in err, err[-2000:]
    # the GGUF conversion bar (transformers calls tqdm.auto.tqdm directly) is silenced too
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from trim_fast.models import loading

    def convert():
        for _ in gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            time.sleep(0.01)

    with loading._progress(True):
        convert()
    assert "Converting and de-quantizing" in capfd.readouterr().err  # the check below can fail
    with loading._progress(False):
        convert()
    assert capfd.readouterr().err == ""


_BAD_LAST_LINE = json.dumps({"id": "last", "messages": [{"role": "user", "content": "a"},
                                                       {"role": "robot", "content": "b"}]})


@pytest.mark.parametrize("command", ["select", "select-targets", "fingerprint", "score", "warmup",
                                     "dry-run"])
def test_data_errors_come_before_the_model_loads(command, tmp_path, capsys, no_model, bank,
                                                 tiny_model_dir, targets):
    """A bad record at the end of a file fails in well under a second, before any model or
    tokenizer is loaded, naming file and line."""
    good = [json.dumps(r) for r in _chats(39)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(good + [_BAD_LAST_LINE]) + "\n")
    fine = _write_jsonl(tmp_path / "fine.jsonl", _chats(5))
    out = ["--out", tmp_path / "o", "--model", tiny_model_dir, "--no-progress"]
    argv = {"select": ["select", "--pool", bad, "--targets", targets, *out],
            "select-targets": ["select", "--pool", fine, "--targets", bad, *out],
            "fingerprint": ["fingerprint", "--targets", bad, *out],
            "score": ["score", "--bank", bank, "--pool", bad, *out],
            "warmup": ["warmup", "--pool", bad, *out],
            "dry-run": ["select", "--pool", bad, "--targets", targets, "--dry-run", *out]}[command]
    t0 = time.monotonic()
    text = refused(capsys, *argv)
    assert f"{bad}:40: unknown role 'robot'" in text, text
    assert time.monotonic() - t0 < 5


# =============================================================================================
# cases the catalogue found handled; kept so that they stay handled
# =============================================================================================


@pytest.mark.parametrize("content,message", [
    ('{"text": "fine"}\n{"text": oops}\n', ":2: malformed JSON"),
    ("", ": empty file (no records)"),
    ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', ":2: duplicate id 'a' (first seen at "),
])
def test_still_handled_bad_pool_files(content, message, tmp_path, capsys, no_model, targets):
    data = tmp_path / "pool.jsonl"
    data.write_text(content)
    text = refused(capsys, "select", "--pool", data, "--targets", targets, "--out", tmp_path / "o")
    assert f"{data}{message}" in text, text


def test_still_handled_corrupt_bank_and_cut_shard(tmp_path, capsys, tiny_model_dir, bank, pool,
                                                  targets):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(open(bank, "rb").read()[:200])
    text = refused(capsys, "score", "--bank", cut, "--model", tiny_model_dir, "--pool", pool, "--out",
                   tmp_path / "o", "--no-progress")
    assert "is not a readable fingerprint bank" in text
    # a shard cut short (a crash of the filesystem, not of the run) is redone, never trusted
    cmd = ["select", "--model", tiny_model_dir, "--pool", pool, "--targets", targets, "--chunk-size",
           "10", "--no-progress"]
    ok(capsys, *cmd, "--out", tmp_path / "a")
    shard = tmp_path / "a" / "work" / "scores" / "chunk-000001.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    ok(capsys, *cmd, "--out", tmp_path / "a")
    assert _summary(tmp_path / "a")["scoring"]["chunks_reused"] == 2
    ok(capsys, *cmd, "--out", tmp_path / "b")
    _same_outputs(tmp_path / "a", tmp_path / "b")


def test_still_handled_remote_code_is_not_run(tmp_path, capsys, tiny_model_dir, pool, targets):
    """``auto_map`` code in a model directory never runs, and nobody is asked on the terminal
    whether it should (transformers asks when ``trust_remote_code`` is not given, and runs the
    code on "y"): refused where transformers has no class of its own for the model, else the
    library's own class loads the weights."""
    model = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"] = {k: "evil.Evil" for k in ("AutoConfig", "AutoModel", "AutoModelForCausalLM")}
    (model / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    cmd = ["select", "--model", model, "--pool", pool, "--targets", targets, "--no-progress"]
    (model / "config.json").write_text(json.dumps(cfg))
    ok(capsys, *cmd, "--out", tmp_path / "o1")  # model_type llama: transformers' LlamaModel
    del cfg["model_type"]
    (model / "config.json").write_text(json.dumps(cfg))
    text = refused(capsys, *cmd, "--out", tmp_path / "o2")
    assert "trim_fast never runs code from model files" in text and "auto_map" in text, text
    assert "remote code ran" not in text
    assert "Do you wish to run the custom code" not in text  # no question on the terminal


def test_a_task_without_counted_tokens_is_named(tiny_model_dir):
    from trim_fast import SelectionConfig, Selector
    from trim_fast.data import DataError

    ok_chat = {"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]}
    asks_only = {"messages": [{"role": "user", "content": "What is 3 + 3?"}]}
    selector = Selector(tiny_model_dir, config=SelectionConfig(scope="response", center="none"))
    with pytest.raises(DataError, match=r"task 'questions' \(records\): none of its 2 target "
                                        r"example\(s\) has a counted token under scope='response'"):
        selector.fingerprint({"answers": [ok_chat], "questions": [asks_only, asks_only]})


def test_library_refuses_k_zero_like_the_cli(tiny_model_dir):
    from trim_fast import Selector

    pool = [{"text": f"record {i}"} for i in range(4)]
    selector = Selector(tiny_model_dir)
    selector.fingerprint = None  # refused before any forward: fingerprinting would fail otherwise
    with pytest.raises(ValueError, match="k must be >= 1"):
        selector.select(pool, pool[:1], k=0)


def test_centring_without_the_pool_is_refused_before_any_model(tmp_path, capsys, monkeypatch,
                                                               tiny_model_dir, targets):
    from trim_fast import SelectionConfig, Selector

    selector = Selector(tiny_model_dir)
    with pytest.raises(ValueError, match="pass the pool"):
        selector.fingerprint(targets)
    Selector(tiny_model_dir, config=SelectionConfig(center="none")).fingerprint(targets)  # no pool needed
    with monkeypatch.context() as m:
        _refuse_loading(m)
        text = refused(capsys, "fingerprint", "--model", tiny_model_dir, "--targets", targets,
                       "--out", tmp_path / "fp")
    assert "pass the pool" in text and "--center none" in text, text
