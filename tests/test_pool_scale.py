"""Issue 7: resumable shards (kill -9 and resume), torchrun with gloo, flat memory on a big pool."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
           PYTHONUNBUFFERED="1")


def _select_argv(model, demo, out, *extra):
    argv = ["select", "--model", model, "--out", str(out), "--no-progress", "--chunk-size", "4",
            "--targets", demo["targets"]["arithmetic"], "--targets", demo["targets"]["json_reformat"]]
    for p in demo["pool"]:
        argv += ["--pool", p]
    return argv + list(extra)


def _py(*args):
    return [sys.executable, *args]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, demo_data):
    out = tmp_path_factory.mktemp("whole")
    subprocess.run(_py("-m", "trim_fast", *_select_argv(tiny_model_dir, demo_data, out)), env=ENV,
                   check=True, capture_output=True)
    return out


def test_killed_run_resumes_to_the_identical_table(tmp_path, uninterrupted, tiny_model_dir, demo_data):
    out = tmp_path / "killed"
    scores = out / "work" / "scores"
    proc = subprocess.Popen(_py("-m", "trim_fast", *_select_argv(tiny_model_dir, demo_data, out)),
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if scores.exists() and any(n.endswith(".safetensors") for n in os.listdir(scores)):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len([n for n in os.listdir(scores) if n.endswith(".safetensors")])
    assert 0 < done_at_kill < 15, "the run was not killed mid-way"  # 60 examples / 4 per chunk
    assert not (out / "scores.parquet").exists()
    subprocess.run(_py("-m", "trim_fast", *_select_argv(tiny_model_dir, demo_data, out)), env=ENV,
                   check=True, capture_output=True)
    summary = json.load(open(out / "summary.json"))
    assert summary["scoring"]["chunks_reused"] >= done_at_kill
    for name in ("sorted.csv", "top_p0.05.jsonl"):
        assert _read(out / name) == _read(uninterrupted / name)


def test_changed_pool_or_bank_is_refused(tmp_path, uninterrupted, tiny_model_dir, demo_data):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    pool = tmp_path / "pool.jsonl"
    shutil.copy(demo_data["pool"][0], pool)
    argv = _select_argv(tiny_model_dir, demo_data, out)
    argv[argv.index(demo_data["pool"][0])] = str(pool)
    r = subprocess.run(_py("-m", "trim_fast", *argv), env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "different pool" in r.stderr
    argv = _select_argv(tiny_model_dir, demo_data, out)
    argv[argv.index(demo_data["targets"]["json_reformat"])] = demo_data["targets"]["list_sorting"]
    r = subprocess.run(_py("-m", "trim_fast", *argv), env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "different targets" in r.stderr


def test_torchrun_two_gloo_processes_equal_one(tmp_path, uninterrupted, tiny_model_dir, demo_data):
    out = tmp_path / "dist"
    r = subprocess.run(_py("-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           "29533", "-m", "trim_fast", *_select_argv(tiny_model_dir, demo_data, out)),
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("sorted.csv", "top_p0.05.jsonl"):
        assert _read(out / name) == _read(uninterrupted / name)
    shards = os.listdir(out / "work" / "scores")
    assert len(shards) == 15


def _peak_rss_mb(tmp_path, model, targets, n):
    pool = tmp_path / f"pool{n}.jsonl"
    with open(pool, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"item {i} costs {i % 97} coins and weighs {i % 13} kg"}) + "\n")
    code = (
        "import resource, sys\n"
        "from trim_fast.cli import main\n"
        f"rc = main(['select', '--model', {model!r}, '--pool', {str(pool)!r}, '--targets', {targets!r},"
        f" '--out', {str(tmp_path / f'out{n}')!r}, '--no-progress', '--chunk-size', '2048', '--k', '10'])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(rc)\n")
    r = subprocess.run(_py("-c", code), env=ENV, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return int(r.stdout.strip().splitlines()[-1]) / 1024


def test_a_100k_pool_streams_with_flat_memory(tmp_path, tiny_model_dir, demo_data):
    small = _peak_rss_mb(tmp_path, tiny_model_dir, demo_data["targets"]["arithmetic"], 10_000)
    big = _peak_rss_mb(tmp_path, tiny_model_dir, demo_data["targets"]["arithmetic"], 100_000)
    # 10x the pool: only per-example bookkeeping (ids, a few floats) may grow, not the examples
    assert big - small < 150, f"peak RSS {small:.0f} MB at 10k examples, {big:.0f} MB at 100k"
