"""End to end: every subcommand and input format on a tiny model, outputs, bad input."""
import json
import os

import pyarrow.parquet as pq
import pytest
import torch

from trim_fast.cli import main
from trim_fast.selection import task_quantiles


def run(*argv):
    return main([str(a) for a in argv])


def _pool_args(demo):
    return sum((["--pool", p] for p in demo["pool"]), [])


@pytest.fixture(scope="module")
def selected(tmp_path_factory, tiny_model_dir, demo_data):
    out = tmp_path_factory.mktemp("select")
    targets = [demo_data["targets"]["arithmetic"], demo_data["targets"]["list_sorting"]]
    rc = run("select", "--model", tiny_model_dir, *_pool_args(demo_data),
             *sum((["--targets", t] for t in targets), []), "--fraction", "0.1", "--out", out,
             "--no-progress")
    assert rc == 0
    return str(out)


def _records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_select_writes_every_output(selected, demo_data):
    names = set(os.listdir(selected))
    assert {"top_p0.1.jsonl", "scores.parquet", "sorted.csv", "summary.json", "report.png"} <= names
    summary = json.load(open(os.path.join(selected, "summary.json")))
    assert summary["pool_size"] == 60 and summary["k"] == 6 and summary["selected"] == 6
    assert summary["tasks"] == ["arithmetic", "list_sorting"]
    assert set(summary["precision_per_task"]) == {"arithmetic", "list_sorting"}
    table = pq.read_table(os.path.join(selected, "scores.parquet")).to_pylist()
    assert len(table) == 60 and [r["rank"] for r in table] == list(range(1, 61))
    assert [r["score"] for r in table] == sorted((r["score"] for r in table), reverse=True)
    # two tasks combine by per-task quantile (the default): the score is the best of the two
    raw = torch.tensor([[r["score[arithmetic]"] for r in table], [r["score[list_sorting]"] for r in table]])
    assert [r["score"] for r in table] == pytest.approx(task_quantiles(raw).amax(0).tolist())
    # the coreset holds the pool records unchanged, best first
    pool = {r["id"]: r for p in demo_data["pool"] for r in _records(p)}
    coreset = _records(os.path.join(selected, "top_p0.1.jsonl"))
    assert [r["id"] for r in coreset] == [r["id"] for r in table if r["selected"]] == [r["id"] for r in table[:6]]
    assert all(pool[r["id"]] == r for r in coreset)


def test_same_command_twice_is_byte_identical(selected, tmp_path, tiny_model_dir, demo_data):
    targets = [demo_data["targets"]["arithmetic"], demo_data["targets"]["list_sorting"]]
    assert run("select", "--model", tiny_model_dir, *_pool_args(demo_data),
               *sum((["--targets", t] for t in targets), []), "--fraction", "0.1", "--out", tmp_path,
               "--no-progress") == 0
    for name in ("top_p0.1.jsonl", "sorted.csv"):
        assert open(os.path.join(selected, name), "rb").read() == open(tmp_path / name, "rb").read()


def test_stages_give_the_same_coreset(selected, tmp_path, tiny_model_dir, demo_data):
    targets = [demo_data["targets"]["arithmetic"], demo_data["targets"]["list_sorting"]]
    assert run("fingerprint", "--model", tiny_model_dir, *sum((["--targets", t] for t in targets), []),
               *_pool_args(demo_data), "--out", tmp_path, "--no-progress") == 0
    banks = sorted(os.path.join(tmp_path, "banks", b) for b in os.listdir(tmp_path / "banks"))
    assert [os.path.basename(b) for b in banks] == ["arithmetic.safetensors", "list_sorting.safetensors"]
    assert run("score", "--model", tiny_model_dir, *_pool_args(demo_data),
               *sum((["--bank", b] for b in banks), []), "--out", tmp_path, "--no-progress") == 0
    assert not any(n.startswith("top_") for n in os.listdir(tmp_path))
    assert run("pick", "--scores", tmp_path / "scores.parquet", *_pool_args(demo_data),
               "--fraction", "0.1", "--out", tmp_path) == 0
    assert (open(tmp_path / "top_p0.1.jsonl", "rb").read()
            == open(os.path.join(selected, "top_p0.1.jsonl"), "rb").read())
    assert run("pick", "--scores", tmp_path / "scores.parquet", *_pool_args(demo_data),
               "--k", "3", "--out", tmp_path) == 0
    assert len(_records(tmp_path / "top_k3.jsonl")) == 3


def test_every_input_format_and_in_domain_mode(tmp_path, tiny_model_dir):
    import pyarrow as pa

    files = {
        "sharegpt.jsonl": [{"conversations": [{"from": "human", "value": f"question {i}"},
                                              {"from": "gpt", "value": f"answer number {i}"}]} for i in range(5)],
        "pc.jsonl": [{"prompt": f"prompt {i}", "completion": f"completion {i}"} for i in range(5)],
        "text.jsonl": [{"text": f"plain text example {i}"} for i in range(5)],
    }
    paths = []
    for name, recs in files.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
        paths.append(str(tmp_path / name))
    pq.write_table(pa.table({"instruction": [f"do {i}" for i in range(5)], "input": [""] * 5,
                             "output": [f"done {i}" for i in range(5)]}), tmp_path / "alpaca.parquet")
    paths.append(str(tmp_path / "alpaca.parquet"))
    out = tmp_path / "out"
    assert run("select", "--model", tiny_model_dir, *sum((["--pool", p] for p in paths), []),
               "--target-sample", "4", "--k", "5", "--out", out, "--no-progress") == 0
    summary = json.load(open(out / "summary.json"))
    assert summary["pool_size"] == 20 and summary["selected"] == 5 and summary["tasks"] == ["in_domain"]
    assert len(summary["selected_by_source"]) >= 1


def test_truncation_is_counted_and_reported(tmp_path, tiny_model_dir, demo_data):
    out = tmp_path / "out"
    assert run("select", "--model", tiny_model_dir, *_pool_args(demo_data), "--targets",
               demo_data["targets"]["list_sorting"], "--max-length", "40", "--out", out,
               "--no-progress") == 0
    summary = json.load(open(out / "summary.json"))
    table = pq.read_table(out / "scores.parquet").to_pylist()
    assert summary["truncated"] == sum(r["truncated"] > 0 for r in table) > 0
    assert all(r["n_tokens"] <= 40 for r in table) and len(table) == 60


def test_example_without_scored_tokens_is_reported_not_selected(tmp_path, tiny_model_dir, demo_data):
    pool = tmp_path / "pool.jsonl"
    recs = [{"id": f"p{i}", "prompt": f"say {i}", "completion": f"{i} {i}"} for i in range(6)]
    recs.append({"id": "empty-answer", "prompt": "say nothing", "completion": ""})
    pool.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    assert run("select", "--model", tiny_model_dir, "--pool", pool, "--targets",
               demo_data["targets"]["arithmetic"], "--scope", "response", "--k", "7", "--out", out,
               "--no-progress") == 0
    summary = json.load(open(out / "summary.json"))
    assert summary["unscored"] == {"count": 1, "ids": ["empty-answer"]}
    assert summary["selected"] == 6  # -inf is never selected, even with k = |P|
    table = {r["id"]: r for r in pq.read_table(out / "scores.parquet").to_pylist()}
    assert table["empty-answer"]["score"] == float("-inf") and not table["empty-answer"]["selected"]


@pytest.mark.parametrize("content,match", [
    ('{"text": "fine"}\n{"text": oops}\n', "bad.jsonl:2: malformed JSON"),
    ('{"colour": "blue"}\n', "bad.jsonl:1: unknown format"),
    ("", "bad.jsonl: empty file"),
    ('{"text": "fine"}\n{"text": ""}\n', "bad.jsonl:2: record has no usable text"),
])
def test_bad_pool_is_refused_naming_file_and_line(tmp_path, capsys, tiny_model_dir, demo_data,
                                                  content, match):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    rc = run("select", "--model", tiny_model_dir, "--pool", bad, "--targets",
             demo_data["targets"]["arithmetic"], "--out", tmp_path / "out", "--no-progress")
    assert rc == 2 and match in capsys.readouterr().err
    assert not (tmp_path / "out" / "scores.parquet").exists()


def test_unwritable_out_and_foreign_bank(tmp_path, capsys, tiny_model_dir, demo_data):
    (tmp_path / "file").write_text("x")
    rc = run("select", "--model", tiny_model_dir, *_pool_args(demo_data), "--targets",
             demo_data["targets"]["arithmetic"], "--out", tmp_path / "file" / "out", "--no-progress")
    assert rc == 2 and "not writable" in capsys.readouterr().err
    # a bank built with another tokenizer is refused
    from trim_fast.bank import FingerprintBank

    assert run("fingerprint", "--model", tiny_model_dir, "--targets", demo_data["targets"]["arithmetic"],
               *_pool_args(demo_data), "--out", tmp_path / "fp", "--no-progress") == 0
    path = tmp_path / "fp" / "banks" / "arithmetic.safetensors"
    bank = FingerprintBank.load(str(path))
    bank.meta["tokenizer_digest"] = "0000000000000000"
    bank.save(str(path))
    rc = run("score", "--model", tiny_model_dir, *_pool_args(demo_data), "--bank", path,
             "--out", tmp_path / "sc", "--no-progress")
    assert rc == 2 and "tokenizer" in capsys.readouterr().err


def test_select_with_warmup_trains_merges_and_reports(tmp_path, tiny_model_dir, demo_data):
    out = tmp_path / "warm"
    assert run("select", "--model", tiny_model_dir, *_pool_args(demo_data), "--targets",
               demo_data["targets"]["arithmetic"], "--warmup", "--warmup-fraction", "0.1",
               "--lora-r", "4", "--lora-alpha", "8", "--warmup-epochs", "1", "--warmup-batch-size", "2",
               "--warmup-micro-batch", "2", "--warmup-lr", "1e-2", "--out", out, "--no-progress") == 0
    summary = json.load(open(out / "summary.json"))
    meta = json.load(open(out / "warmup_adapter" / "trim_warmup.json"))
    assert summary["warmup"]["subset_size"] == 6 == len(meta["subset"]["ids"])
    assert os.path.exists(out / "warmup_adapter" / "adapter_config.json")
    # a rerun reuses the adapter (a resumed run must not retrain it) and gives the same table
    before = (out / "sorted.csv").read_bytes()
    assert run("select", "--model", tiny_model_dir, *_pool_args(demo_data), "--targets",
               demo_data["targets"]["arithmetic"], "--warmup", "--warmup-fraction", "0.1",
               "--lora-r", "4", "--lora-alpha", "8", "--warmup-epochs", "1", "--warmup-batch-size", "2",
               "--warmup-micro-batch", "2", "--warmup-lr", "1e-2", "--out", out, "--no-progress") == 0
    assert (out / "sorted.csv").read_bytes() == before
    assert json.load(open(out / "summary.json"))["scoring"]["chunks_reused"] == 1
    # the warmed-up model scores differently from the base model
    base = tmp_path / "base"
    assert run("select", "--model", tiny_model_dir, *_pool_args(demo_data), "--targets",
               demo_data["targets"]["arithmetic"], "--out", base, "--no-progress") == 0
    s_warm = [r["score"] for r in pq.read_table(out / "scores.parquet").to_pylist()]
    s_base = [r["score"] for r in pq.read_table(base / "scores.parquet").to_pylist()]
    assert s_warm != s_base


def test_demo_with_warmup_records_both_runs(tmp_path, tiny_model_dir):
    out = tmp_path / "demo"
    assert run("demo", "--model", tiny_model_dir, "--pool-size", "60", "--targets-per-family", "3",
               "--out", out, "--no-progress", "--warmup",
               "--lora-r", "4", "--lora-alpha", "8", "--epochs", "1") == 0
    summary = json.load(open(out / "summary.json"))
    assert set(summary["precision_per_task"]) == set(summary["warmup_comparison"])
    for task, both in summary["warmup_comparison"].items():
        assert both["no_warmup"] == summary["precision_per_task"][task]["precision"]
        assert 0.0 <= both["warmup"] <= 1.0
    assert summary["warmup_run"]["subset_size"] == 3
    assert os.path.exists(out / "warmup" / "warmup_adapter" / "adapter_config.json")
    assert os.path.exists(out / "top_p0.05.jsonl") and os.path.exists(out / "warmup" / "report.png")
