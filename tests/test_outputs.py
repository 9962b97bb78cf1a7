"""Outputs (coreset formats, the LESS layout), --config and --dry-run, through the CLI."""
import json
import os

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trim_fast.cli import main


def run(*argv):
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def pool_parquet(tmp_path_factory, demo_data):
    """The demo pool's chat records as Parquet, with a binary column and a NaN the coreset must
    keep as they are."""
    rows = []
    with open(demo_data["pool"][0]) as f:
        for i, line in enumerate(f):
            rec = json.loads(line)
            rec["blob"] = bytes([i % 256, 0, 255])
            rec["weight"] = float("nan") if i % 3 == 0 else 0.5 * i
            rows.append(rec)
    path = tmp_path_factory.mktemp("pq") / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_parquet_in_parquet_out_keeps_values_and_types(tmp_path, tiny_model_dir, demo_data, pool_parquet):
    out = tmp_path / "o"
    assert run("select", "--model", tiny_model_dir, "--pool", pool_parquet, "--targets",
               demo_data["targets"]["arithmetic"], "--k", "4", "--out", out, "--no-progress") == 0
    table = pq.read_table(out / "top_k4.parquet")
    source = pq.read_table(pool_parquet)
    assert table.schema == source.schema.remove_metadata()
    ranked = [r for r in pq.read_table(out / "scores.parquet").to_pylist() if r["selected"]]
    want = source.take([r["index"] for r in ranked]).to_pylist()
    got = table.to_pylist()
    for g, w in zip(got, want):
        assert g["blob"] == w["blob"] and isinstance(g["blob"], bytes)
        assert (g["weight"] != g["weight"] and w["weight"] != w["weight"]) or g["weight"] == w["weight"]
    # JSONL cannot carry bytes unchanged: asked for JSONL, the run says so instead of "b'..'"
    rc = run("select", "--model", tiny_model_dir, "--pool", pool_parquet, "--targets",
             demo_data["targets"]["arithmetic"], "--k", "4", "--out", tmp_path / "j",
             "--output-format", "jsonl", "--no-progress")
    assert rc == 2


def test_hf_output_is_a_dataset_equal_to_the_jsonl_coreset(tmp_path, tiny_model_dir, demo_data):
    args = ["select", "--model", tiny_model_dir, *sum((["--pool", p] for p in demo_data["pool"]), []),
            "--targets", demo_data["targets"]["list_sorting"], "--fraction", "0.1", "--no-progress"]
    assert run(*args, "--out", tmp_path / "j") == 0
    assert run(*args, "--out", tmp_path / "h", "--output-format", "hf") == 0
    ds = datasets.load_from_disk(str(tmp_path / "h" / "top_p0.1"))
    with open(tmp_path / "j" / "top_p0.1.jsonl") as f:
        jsonl = [json.loads(line) for line in f]
    assert [r["id"] for r in ds] == [r["id"] for r in jsonl]


def test_less_layout(tmp_path, tiny_model_dir, demo_data):
    out = tmp_path / "less"
    assert run("select", "--model", tiny_model_dir, *sum((["--pool", p] for p in demo_data["pool"]), []),
               "--targets", demo_data["targets"]["arithmetic"], "--targets",
               demo_data["targets"]["json_reformat"], "--fraction", "0.09", "--layout", "less",
               "--out", out, "--no-progress") == 0
    table = sorted(pq.read_table(out / "scores.parquet").to_pylist(), key=lambda r: r["index"])
    lines = {}
    for p in demo_data["pool"]:
        with open(p) as f:
            lines[os.path.basename(p).split(".")[0]] = [json.loads(x) for x in f]
    for t_i, task in enumerate(("arithmetic", "json_reformat")):
        rows = (out / task / "sorted.csv").read_text().splitlines()
        assert rows[0] == "file name, index, score" and len(rows) == 61
        scores = [float(r.split(", ")[2]) for r in rows[1:]]
        assert scores == sorted(scores, reverse=True)
        label, index, score = rows[1].split(", ")
        best = max(table, key=lambda r: (r[f"score[{task}]"], -r["index"]))
        assert lines[label][int(index)]["id"] == best["id"]
        assert float(score) == round(best[f"score[{task}]"], 6)
        top = [json.loads(x) for x in (out / task / "top_p0.09.jsonl").read_text().splitlines()]
        assert len(top) == 5  # int(0.09 * 60) = 5 as LESS rounds; half-up would keep 5 too
        assert top[0]["id"] == best["id"]
    summary = json.load(open(out / "summary.json"))
    assert summary["k"] == 5 and summary["resolved"]["layout"] == "less"


def test_config_file_sets_flags_and_command_line_wins(tmp_path, tiny_model_dir, demo_data, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\npool: {demo_data['pool']}\n"
                   f"targets: {demo_data['targets']['arithmetic']}\nlayers: '2'\nfraction: 0.2\n"
                   "no-progress: true\n")
    out = tmp_path / "c"
    assert run("select", "--config", cfg, "--fraction", "0.1", "--out", out) == 0
    summary = json.load(open(out / "summary.json"))
    assert summary["config"]["layers"] == 2 and summary["config"]["fraction"] == 0.1
    assert summary["config"]["fallback"] == "skip"  # resolved: the method's value, not None
    assert summary["resolved"]["model"]["model"] == tiny_model_dir
    for content, message in (({"layerz": 3}, "unknown setting 'layerz'"),
                             ({"layers": "four"}, "layers: 'four' is not a valid int"),
                             ({"layout": "LESS"}, "layout: 'LESS' is not one of trim, less"),
                             ({"dry-run": "yes"}, "dry-run: expected true or false")):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(content))
        assert run("select", "--config", bad, "--out", out) == 2
        assert f"--config {bad}: " in capsys.readouterr().err


def test_dry_run_estimates_and_writes_nothing(tmp_path, tiny_model_dir, demo_data, capsys):
    out = tmp_path / "dry"
    assert run("select", "--model", tiny_model_dir, *sum((["--pool", p] for p in demo_data["pool"]), []),
               "--targets", demo_data["targets"]["arithmetic"], "--out", out, "--dry-run") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pool_examples"] == 60 and report["target_tasks"] == {"arithmetic": 4}
    assert report["estimated_pool_tokens"] > 0 and report["measured_forward_tokens_per_s"] > 0
    assert report["estimated_scoring_seconds"] > 0
    assert not out.exists()
