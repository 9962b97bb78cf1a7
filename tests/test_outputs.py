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
    # the pool mixes chat and Alpaca records: every field of both comes back (a table has one
    # set of columns, so a field a record lacks is null in its row)
    assert len({tuple(sorted(r)) for r in jsonl}) == 2
    assert [{k: v for k, v in row.items() if k in j or v is not None} for row, j in zip(ds, jsonl)] == jsonl


def test_less_layout(tmp_path, tiny_model_dir, demo_data):
    out = tmp_path / "less"
    assert run("select", "--model", tiny_model_dir, *sum((["--pool", p] for p in demo_data["pool"]), []),
               "--targets", demo_data["targets"]["arithmetic"], "--targets",
               demo_data["targets"]["json_reformat"], "--fraction", "0.0925", "--layout", "less",
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
        top = [json.loads(x) for x in (out / task / "top_p0.0925.jsonl").read_text().splitlines()]
        assert len(top) == 5  # int(0.0925 * 60) = int(5.55) = 5 as LESS rounds; half-up keeps 6
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


def _examples(records, source="pool.jsonl"):
    from trim_fast.data import record_to_example

    return [record_to_example(r, "alpaca", source=source, line=i + 1) for i, r in enumerate(records)]


MIXED = [{"instruction": "a", "output": "b"},
         {"instruction": "c", "input": "d", "output": "e", "meta": {"tag": "x"}},
         {"instruction": "f", "output": "g", "w": float("nan"), "z": float("-inf")}]


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_table_coresets_keep_every_field_of_every_record(tmp_path, fmt):
    from trim_fast.run.outputs import write_coreset

    path = str(tmp_path / "core")
    write_coreset(_examples(MIXED), path, fmt)
    rows = pq.read_table(path).to_pylist() if fmt == "parquet" else datasets.load_from_disk(path).to_list()
    assert set(rows[0]) == {"instruction", "input", "output", "meta", "w", "z"}
    for row, rec in zip(rows, MIXED):
        kept = {k: v for k, v in row.items() if k in rec}
        assert json.dumps(kept, sort_keys=True) == json.dumps(rec, sort_keys=True)  # NaN == NaN here
        assert all(v is None for k, v in row.items() if k not in rec)


def test_table_coreset_refuses_a_field_of_two_types_naming_it(tmp_path):
    from trim_fast.data import DataError
    from trim_fast.run.outputs import write_coreset

    recs = [{"instruction": "a", "output": "b", "n": 1}, {"instruction": "c", "output": "d", "n": "x"}]
    with pytest.raises(DataError, match="field 'n'.*--output-format jsonl"):
        write_coreset(_examples(recs), str(tmp_path / "c.parquet"), "parquet")


def test_selection_to_dataset_keeps_every_field(tiny_model_dir):
    from trim_fast import Selector

    picked = Selector(tiny_model_dir).select(MIXED, MIXED, k=3)  # every record matches a target
    rows = picked.to_dataset().to_list()
    assert len(rows) == 3
    assert {"input", "meta", "w", "z", "trim_score"} <= set(rows[0])
    by_instruction = {r["instruction"]: r for r in rows}
    assert by_instruction["c"]["meta"] == {"tag": "x"} and by_instruction["c"]["input"] == "d"


def test_jsonl_coreset_writes_nonfinite_values_back_as_read(tmp_path, caplog):
    from trim_fast.run.outputs import write_coreset

    path = tmp_path / "c.jsonl"
    write_coreset(_examples(MIXED), str(path), "jsonl")  # read from JSON text: tokens kept
    back = [json.loads(line) for line in path.read_text().splitlines()]
    assert back[2]["z"] == float("-inf") and back[2]["w"] != back[2]["w"]
    assert back[:2] == MIXED[:2]
    with caplog.at_level("WARNING", logger="trim_fast"):  # from Parquet: strict JSON, and said
        write_coreset(_examples(MIXED, source="pool.parquet"), str(path), "jsonl")
    assert "2 NaN or infinite value(s)" in caplog.text and "pool.parquet:3: field 'w'" in caplog.text
    assert json.loads(path.read_text().splitlines()[2]) == dict(MIXED[2], w=None, z=None)


def test_task_names_are_distinct_and_safe_for_files():
    from trim_fast.data import task_names

    assert task_names(["math.jsonl", "math-2.jsonl", "a/math.jsonl", "/t/tg/*.jsonl",
                       "/x/part-*.jsonl", "org/name", "dir/", "my tasks!.jsonl"]) == \
        ["math", "math-2", "math-3", "tg", "part", "name", "dir", "my_tasks"]


def test_less_layout_refuses_a_task_named_like_a_run_folder_before_writing(tmp_path, demo_data,
                                                                           capsys):
    work = tmp_path / "work.jsonl"
    work.write_text(open(demo_data["targets"]["arithmetic"]).read())
    assert run("select", "--model", "/nonexistent/model", "--pool", demo_data["pool"][0],  # no model
               "--targets", work, "--layout", "less", "--out", tmp_path / "o") == 2
    assert "['work'] are folders of the run itself" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_pick_takes_the_pool_under_another_spelling(tmp_path, monkeypatch, tiny_model_dir, demo_data):
    pool = tmp_path / "pool.jsonl"
    with open(demo_data["pool"][0]) as f:  # records without ids: ids are file:line
        pool.write_text("".join(json.dumps({k: v for k, v in json.loads(x).items() if k != "id"}) + "\n"
                                for x in f))
    assert run("select", "--model", tiny_model_dir, "--pool", pool, "--targets",
               demo_data["targets"]["arithmetic"], "--k", "4", "--out", tmp_path / "s", "--no-progress") == 0
    monkeypatch.chdir(tmp_path)
    assert run("pick", "--scores", "s/scores.parquet", "--pool", "./pool.jsonl", "--k", "4",
               "--out", "p") == 0
    assert (tmp_path / "p" / "top_k4.jsonl").read_text() == (tmp_path / "s" / "top_k4.jsonl").read_text()


def test_to_dataset_of_a_selection_of_a_selection_replaces_the_score(tiny_model_dir):
    from trim_fast import Selector

    selector = Selector(tiny_model_dir)
    first = selector.select(datasets.Dataset.from_list(MIXED), MIXED, k=3).to_dataset()
    second = selector.select(first, MIXED, k=2)
    again = second.to_dataset()
    assert again.column_names.count("trim_score") == 1 and len(again) == 2
    assert again["trim_score"] == [float(second.combined[i]) for i in second.indices]
