"""`trim-fast bench` (trim_fast/benchmark.py): every path runs on one pool and the JSON says what
was measured; the CLI hook writes the JSON and the plot."""
import json
import os

from trim_fast.cli import main


def test_bench_cli_writes_json_and_plot(tmp_path, tiny_model_dir, demo_data, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", tiny_model_dir, "--pool", *demo_data["pool"],
                 "--pool-size", "12", "--repeats", "1", "--saliency-n", "64",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert os.path.exists(tmp_path / "bench.png")
    assert set(result["seconds"]) == {"trim_scoring", "trim_scoring_plain", "bare_forward",
                                      "naive_frontend"}
    assert result["pool_examples"] == 12 and result["shared_prefix_tokens"] > 0
    assert result["levers"]["prefix_fallback"] is None
    # the levers forwarded fewer real tokens than the pool holds (prefix once, tails cut)
    assert result["levers"]["forwarded"] < result["pool_tokens"]
    assert [r["N"] for r in result["saliency_vs_sdpa"]] == [64]
    assert "trim / bare full forward" in capsys.readouterr().out


def test_bench_times_only_the_paths_asked_for(tmp_path, tiny_model_dir, demo_data, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", tiny_model_dir, "--pool", *demo_data["pool"],
                 "--pool-size", "6", "--repeats", "1", "--saliency-n", "--no-plot",
                 "--paths", "bare_forward", "trim_scoring", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result["seconds"]) == ["trim_scoring", "bare_forward"]
    assert result["trim_over_bare"] > 0 and result["trim_over_naive"] is None
    assert "saliency_vs_sdpa" not in result and not os.path.exists(tmp_path / "bench.png")
    assert "trim / naive frontend: -" in capsys.readouterr().out
