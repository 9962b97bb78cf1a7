"""The DataFlex selector and the data-juicer operator, each run through its real package on a
tiny model. Each must give the same top k as ``trim-fast select`` on the same data.

The packages are installed as .ci/run installs them: ``dataflex`` and ``py-data-juicer`` with
``--no-deps``, plus the few packages data-juicer needs to import and build an operator (ray
among them). Where a package is absent, its tests are skipped. In CI (``CI`` set), a missing
package makes its tests fail instead, so the plug-ins are never skipped there without notice.
data-juicer's automatic ``pip install`` of missing modules is blocked for the whole module, so
a test fails rather than install anything into the running environment.
"""
import importlib
import json
import os
import pathlib
import re
import sys

import pyarrow.parquet as pq
import pytest

from trim_fast.cli import main

K = 6


def _require(module: str):
    if os.environ.get("CI"):  # CI installs it: absent is a failure, not a skip
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            pytest.fail(f"{module} is not importable ({exc}), but .ci/run installs it")
    return pytest.importorskip(module, reason=f"{module} is not installed (.ci/run installs it)")


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def _cli_select(tmp_path, model_dir, pool, targets, *flags):
    """``trim-fast select`` in-process: (selected pool indices best first, {index: score},
    coreset records)."""
    out = tmp_path / "cli"
    argv = ["-q", "select", "--model", model_dir, "--pool", pool,
            *sum((["--targets", t] for t in targets), []), "--k", str(K), "--out", str(out),
            "--no-progress", *flags]
    assert main([str(a) for a in argv]) == 0
    table = pq.read_table(out / "scores.parquet").to_pydict()
    top = [i for i, s in zip(table["index"], table["selected"]) if s]
    with open(out / f"top_k{K}.jsonl") as f:
        coreset = [json.loads(line) for line in f]
    return top, dict(zip(table["index"], table["score"])), coreset


def _chat(path):
    """Records of a demo file as chat messages (Alpaca rows converted)."""
    out = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if "messages" not in r:
                r = {"id": r["id"], "family": r["family"],
                     "messages": [{"role": "user", "content": r["instruction"]},
                                  {"role": "assistant", "content": r["output"]}]}
            out.append(r)
    return out


@pytest.fixture(scope="module")
def chat_pool(demo_data):
    return [r for p in demo_data["pool"] for r in _chat(p)]


# ------------------------------------------------------------------------------------- DataFlex


def _llamafactory_row(tokenizer, messages):
    """A row as LLaMA-Factory's supervised preprocessing hands it to DataFlex: the chat template
    applied, the prompt's labels -100, no text left."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert full.startswith(prompt)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    ids = p_ids + r_ids
    return {"input_ids": ids, "attention_mask": [1] * len(ids),
            "labels": [-100] * len(p_ids) + r_ids, "images": None, "videos": None, "audios": None}


@pytest.fixture(scope="module")
def lf_rows(chat_pool, demo_data, smollm_tokenizer):
    pool = [_llamafactory_row(smollm_tokenizer, r["messages"]) for r in chat_pool]
    evals = {fam: [_llamafactory_row(smollm_tokenizer, r["messages"]) for r in _chat(path)]
             for fam, path in list(demo_data["targets"].items())[:2]}
    return pool, evals


@pytest.fixture
def dataflex_build(tmp_path):
    """Build the selector exactly as DataFlex's SelectTrainer does: components YAML ->
    load_component -> REGISTRY.build with the trainer's runtime dict."""
    _require("dataflex")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from dataflex.core.registry import REGISTRY
    from dataflex.utils.load_component import load_component

    from trim_fast.integrations.dataflex import register

    assert register() is register()  # idempotent: a second import or launch does not fail

    def build(params: dict, dataset, eval_dataset, data_collator=None):
        import yaml

        cfg_file = tmp_path / "components.yaml"
        cfg_file.write_text(yaml.safe_dump({"selectors": {"trim": {"name": "trim",
                                                                    "params": params}}}))
        sel_params = load_component("selectors", str(cfg_file), "trim", runtime_vars={})
        runtime = dict(dataset=dataset, eval_dataset=eval_dataset,
                       accelerator=Accelerator(cpu=True), data_collator=data_collator)
        return REGISTRY.build("selector", "trim", runtime=runtime, cfg=sel_params)

    yield build
    AcceleratorState._reset_state(reset_partial_state=True)


def _select_kwargs(**extra):
    """What SelectTrainer passes besides model, step_id and num_samples."""
    return dict(optimizer_state={}, scheduler_state={}, current_update_times=1, update_times=2,
                **extra)


def _training_model(model_dir):
    from trim_fast.models.loading import load_causal_lm

    model = load_causal_lm(model_dir).train()
    model.model.layers[0].eval()  # a submodule in eval on purpose: its flag must come back too
    return model


def test_dataflex_selector_equals_cli_topk_and_restores_train_mode(
        tmp_path, dataflex_build, lf_rows, tiny_model_dir, smollm_tokenizer):
    import datasets
    import torch.distributed as dist

    pool_rows, evals = lf_rows
    task = next(iter(evals))
    top, scores, _ = _cli_select(tmp_path, tiny_model_dir, _write_jsonl(tmp_path / "pool.jsonl", pool_rows),
                                 [_write_jsonl(tmp_path / f"{task}.jsonl", evals[task])],
                                 "--layers", 2)
    cache = tmp_path / "cache"
    sel = dataflex_build({"cache_dir": str(cache), "layers": 2},
                         datasets.Dataset.from_list(pool_rows), datasets.Dataset.from_list(evals[task]))
    assert sel.config.layers == 2 and sel.config.max_tokens == 8192  # unset: trim's default
    model = _training_model(tiny_model_dir)
    modes = {n: m.training for n, m in model.named_modules()}
    assert not all(modes.values()) and any(modes.values())

    # a world of one under an initialised process group: the broadcast path runs
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        got = sel.select(model=model, step_id=10, num_samples=K,
                         **_select_kwargs(tokenizer=smollm_tokenizer))
    finally:
        dist.destroy_process_group()
    assert got == top
    assert {n: m.training for n, m in model.named_modules()} == modes
    saved = json.loads((cache / "step_10.json").read_text())
    assert saved["indices"] == top
    assert saved["metric"]["trim_score"] == pytest.approx([scores[i] for i in top], rel=1e-6)
    assert len(sel.warmup(3, replacement=False)) == 3  # DataFlex's own warmup still works


def test_dataflex_selector_tasks_scope_and_candidate_pool(tmp_path, dataflex_build, lf_rows,
                                                          tiny_model_dir, smollm_tokenizer):
    """Several eval datasets are several tasks; scope 'all' counts the prompt too (= the CLI on
    the rows without labels); the tokenizer can come from the collator; a candidate pool set by
    DataFlex is scored on its own and mapped back to global indices."""
    import datasets

    from trim_fast import Selector
    from trim_fast.integrations import selection_config

    pool_rows, evals = lf_rows
    unlabelled = [{k: v for k, v in r.items() if k != "labels"} for r in pool_rows]
    target_files = [_write_jsonl(tmp_path / f"{t}.jsonl",
                                 [{k: v for k, v in r.items() if k != "labels"} for r in rows])
                    for t, rows in evals.items()]
    top, _, _ = _cli_select(tmp_path, tiny_model_dir, _write_jsonl(tmp_path / "pool.jsonl", unlabelled),
                            target_files)

    class Collator:
        tokenizer = smollm_tokenizer

    sel = dataflex_build({"scope": "all"}, datasets.Dataset.from_list(pool_rows),
                         {t: datasets.Dataset.from_list(rows) for t, rows in evals.items()},
                         data_collator=Collator())
    model = _training_model(tiny_model_dir)
    assert sel.select(model=model, step_id=1, num_samples=K, **_select_kwargs()) == top

    positions = list(range(1, len(pool_rows), 2))
    sel.set_candidate_pool(positions)
    got = sel.select(model=model, step_id=2, num_samples=K, **_select_kwargs())
    model.eval()
    subset = [pool_rows[i] for i in positions]
    expect = Selector(model, smollm_tokenizer, selection_config(scope="all")).select(
        [{k: v for k, v in r.items() if k != "labels"} for r in subset],
        {t: [{k: v for k, v in r.items() if k != "labels"} for r in rows]
         for t, rows in evals.items()}, k=K).indices
    assert got == [positions[i] for i in expect] and set(got) <= set(positions)


def test_dataflex_selector_refusals(dataflex_build, lf_rows):
    import datasets

    pool = datasets.Dataset.from_list(lf_rows[0])
    with pytest.raises(ValueError, match="eval_dataset"):
        dataflex_build({}, pool, None)
    with pytest.raises(ValueError, match="scope"):
        dataflex_build({"scope": "everything"}, pool, pool)
    with pytest.raises(ValueError, match="layers"):
        dataflex_build({"layers": 0}, pool, pool)


def test_dataflex_selector_with_nothing_selectable_says_why(dataflex_build, lf_rows, tiny_model_dir,
                                                              smollm_tokenizer):
    import datasets

    pool_rows, evals = lf_rows
    unlabelled = [dict(r, labels=[-100] * len(r["input_ids"])) for r in pool_rows]  # nothing counts
    sel = dataflex_build({"method": "paper", "layers": 2}, datasets.Dataset.from_list(unlabelled),
                         datasets.Dataset.from_list(next(iter(evals.values()))))
    with pytest.raises(ValueError, match="none of the .* candidate rows has a counted token"):
        sel.select(model=_training_model(tiny_model_dir), step_id=1, num_samples=K,
                   **_select_kwargs(tokenizer=smollm_tokenizer))


def test_dataflex_launcher_registers_then_runs_dataflex_launch(monkeypatch):
    """``python -m trim_fast.integrations.dataflex cfg.yaml``: trim is registered before
    DataFlex's own launcher runs. (dataflex.launcher itself imports LLaMA-Factory, which does
    not install here, so a stand-in records the call.)"""
    _require("dataflex")
    import types

    from dataflex.core.registry import REGISTRY

    from trim_fast.integrations import dataflex as plugin

    calls = []
    monkeypatch.setitem(sys.modules, "dataflex.launcher",
                        types.SimpleNamespace(launch=lambda: calls.append(
                            REGISTRY.get("selector", "trim"))))
    plugin.launch()
    assert calls == [plugin.register()]


def test_dataflex_scope_sets_the_counted_tokens():
    """response: the labels as given; all: labels dropped; prompt: the -100 tokens count."""
    import datasets

    from trim_fast.data import open_records
    from trim_fast.integrations.dataflex import counted_rows

    rows = datasets.Dataset.from_list([{"input_ids": [5, 6, 7, 8], "attention_mask": [1, 1, 1, 1],
                                        "labels": [-100, -100, 7, 8]}])
    counted = {scope: next(iter(open_records(counted_rows(rows, scope)))).tokens[1]
               for scope in ("response", "all", "prompt")}
    assert counted == {"response": [False, False, True, True], "all": [True] * 4,
                       "prompt": [True, True, False, False]}


def test_dataflex_missing_names_install_command(monkeypatch):
    for name in [m for m in sys.modules if m == "dataflex" or m.startswith("dataflex.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "dataflex", None)
    from trim_fast.integrations import dataflex

    with pytest.raises(ImportError, match="pip install --no-deps dataflex"):
        dataflex.register()


# ---------------------------------------------------------------------------------- data-juicer


@pytest.fixture(scope="module")
def dj():
    """data-juicer, with its automatic installs turned into errors; the trim_selector op."""
    _require("data_juicer")
    _require("ray")  # needed to build any op; absent, data-juicer would pip-install it
    from data_juicer.utils import lazy_loader

    def refuse(*args, **kwargs):
        raise RuntimeError(f"data-juicer tried to install a package: {args} {kwargs}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lazy_loader.LazyLoader, "_install_package", classmethod(refuse))
        mp.setattr(lazy_loader.LazyLoader, "check_packages", classmethod(refuse))
        from data_juicer.ops.base_op import OPERATORS
        from data_juicer.utils.constant import Fields

        import trim_fast.integrations.data_juicer as plugin

        assert OPERATORS.modules[plugin.NAME] is plugin.TrimSelector
        yield OPERATORS, Fields, plugin


@pytest.fixture(scope="module")
def dj_cli(tmp_path_factory, chat_pool, demo_data, tiny_model_dir):
    """``trim-fast select`` on the chat pool written to JSONL, k=K, one target task."""
    tmp = tmp_path_factory.mktemp("dj")
    pool = _write_jsonl(tmp / "pool.jsonl", chat_pool)
    target = demo_data["targets"]["arithmetic"]
    return (pool, target, *_cli_select(tmp, tiny_model_dir, pool, [target]))


def test_data_juicer_operator_equals_cli_topk(dj, dj_cli, chat_pool, tiny_model_dir):
    import datasets

    OPERATORS, Fields, plugin = dj
    _, target, top, scores, coreset = dj_cli
    # an earlier op's stats must survive next to the new score
    ds = datasets.Dataset.from_list([{**r, Fields.stats: {"turns": len(r["messages"])}}
                                     for r in chat_pool])
    op = OPERATORS.modules["trim_selector"](targets=target, model=tiny_model_dir, k=K, num_proc=1)
    out = op.run(ds)
    assert isinstance(out, datasets.Dataset) and len(out) == K
    assert out["id"] == [chat_pool[i]["id"] for i in top] == [r["id"] for r in coreset]
    assert out["messages"] == [r["messages"] for r in coreset]  # rows come back unchanged
    stats = out[Fields.stats]
    assert [s[plugin.SCORE_KEY] for s in stats] == pytest.approx([scores[i] for i in top], rel=1e-6)
    assert all(s["turns"] == 2 for s in stats)

    # keep_all: every row, in order, scored; data-juicer's own top-k selector then agrees
    from data_juicer.ops.selector.topk_specified_field_selector import TopkSpecifiedFieldSelector

    everything = OPERATORS.modules["trim_selector"](targets=[target], model=tiny_model_dir,
                                                    keep_all=True, num_proc=1).run(ds)
    assert everything["id"] == [r["id"] for r in chat_pool]
    assert [s[plugin.SCORE_KEY] for s in everything[Fields.stats]] == pytest.approx(
        [scores[i] for i in range(len(chat_pool))], rel=1e-6)
    picked = TopkSpecifiedFieldSelector(field_key=f"{Fields.stats}.{plugin.SCORE_KEY}",
                                        topk=K).run(everything)
    assert picked["id"] == out["id"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # data-juicer's jsonargparse calls
def test_data_juicer_recipe_runs_the_operator(tmp_path, monkeypatch, dj, dj_cli, chat_pool,
                                             tiny_model_dir):
    """A data-juicer recipe names the op and its settings; data-juicer parses them against the
    op's signature, loads the JSONL, runs the op and exports the rows with their stats."""
    import yaml
    from data_juicer.config import init_configs
    from data_juicer.core import DefaultExecutor
    from data_juicer.utils import logger_utils

    _, Fields, plugin = dj
    pool, target, top, scores, _ = dj_cli
    # data-juicer's logger setup would redirect this process's stdout/stderr into loguru, and
    # its ds_cache_dir moves the datasets cache of the whole process: put both back afterwards
    monkeypatch.setattr(logger_utils, "LOGGER_SETUP", True)
    from datasets import config

    for name in ("HF_DATASETS_CACHE", "DEFAULT_DOWNLOADED_DATASETS_PATH",
                 "DOWNLOADED_DATASETS_PATH", "DEFAULT_EXTRACTED_DATASETS_PATH",
                 "EXTRACTED_DATASETS_PATH"):
        monkeypatch.setattr(config, name, getattr(config, name))
    recipe = tmp_path / "recipe.yaml"
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    steps = yaml.safe_load(re.search(r"```yaml\n(dataset_path.*?)```", readme, re.S).group(1))
    steps.update({"project_name": "trim", "dataset_path": pool, "np": 1,  # README's recipe, here
                  "ds_cache_dir": str(tmp_path / "hf_cache"),
                  "export_path": str(tmp_path / "out" / "result.jsonl"),
                  "process": [{"trim_selector": {"targets": target, "model": tiny_model_dir, "k": K}}]})
    recipe.write_text(yaml.safe_dump(steps))
    DefaultExecutor(init_configs(args=["--config", str(recipe)])).run()
    assert config.HF_DATASETS_CACHE == tmp_path / "hf_cache"  # (put back at teardown)
    import datasets

    assert datasets.is_caching_enabled()  # nothing else of the process was switched
    with open(tmp_path / "out" / "result.jsonl") as f:
        ids = [json.loads(line)["id"] for line in f]
    with open(tmp_path / "out" / "result_stats.jsonl") as f:
        got = [json.loads(line)[Fields.stats][plugin.SCORE_KEY] for line in f]
    assert ids == [chat_pool[i]["id"] for i in top]
    assert got == pytest.approx([scores[i] for i in top], rel=1e-6)


def test_data_juicer_operator_reads_rows_of_no_known_shape_from_text_key(dj, chat_pool,
                                                                       demo_data, tiny_model_dir):
    import datasets

    OPERATORS, Fields, plugin = dj
    texts = [" ".join(m["content"] for m in r["messages"]) for r in chat_pool[:12]]
    target = demo_data["targets"]["arithmetic"]
    runs = {}
    for key in ("text", "content"):
        ds = datasets.Dataset.from_list([{"id": str(i), key: t} for i, t in enumerate(texts)])
        out = OPERATORS.modules["trim_selector"](targets=target, model=tiny_model_dir, k=3,
                                                 text_key=key, num_proc=1).run(ds)
        runs[key] = (out["id"], [s[plugin.SCORE_KEY] for s in out[Fields.stats]])
    assert runs["content"] == runs["text"] and len(runs["text"][0]) == 3


def test_data_juicer_operator_refuses_bad_settings(dj):
    OPERATORS, _, _ = dj
    with pytest.raises(ValueError, match="fraction"):
        OPERATORS.modules["trim_selector"](targets="t.jsonl", fraction=1.5)
    with pytest.raises(ValueError, match="scope"):
        OPERATORS.modules["trim_selector"](targets="t.jsonl", scope="everything")


def test_data_juicer_entry_point_registers_the_operator(tmp_path, monkeypatch, dj):
    """The entry point trim_fast declares in pyproject.toml (group data_juicer.ops) loads."""
    OPERATORS, _, plugin = dj
    info = tmp_path / "trim_fast_probe-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: trim-fast-probe\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(
        "[data_juicer.ops]\ntrim_fast = trim_fast.integrations.data_juicer\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from data_juicer.ops import load_op_plugins

    assert "trim_fast" in load_op_plugins()
    assert OPERATORS.modules["trim_selector"] is plugin.TrimSelector


def test_data_juicer_missing_names_install_command(monkeypatch):
    for name in [m for m in sys.modules if m == "data_juicer" or m.startswith("data_juicer.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "data_juicer", None)
    monkeypatch.delitem(sys.modules, "trim_fast.integrations.data_juicer", raising=False)
    with pytest.raises(ImportError, match="pip install --no-deps py-data-juicer"):
        importlib.import_module("trim_fast.integrations.data_juicer")


def test_dataflex_rows_select_as_chat_records_do(dataflex_build, lf_rows, chat_pool, demo_data,
                                                 tiny_model_dir, smollm_tokenizer):
    """LLaMA-Factory labels the template's `<|im_end|>` and the newline after it; those never
    count (SPEC 0), so the plug-in on those rows selects what the library selects from the same
    pool as chat records, under both of its scopes (issue 18)."""
    import datasets

    from trim_fast import Selector
    from trim_fast.integrations import selection_config

    pool_rows, evals = lf_rows
    chat_targets = {fam: [{"messages": r["messages"]} for r in _chat(path)]
                    for fam, path in list(demo_data["targets"].items())[:2]}
    model = _training_model(tiny_model_dir)
    for scope in ("response", "all"):
        sel = dataflex_build({"scope": scope}, datasets.Dataset.from_list(pool_rows),
                             {t: datasets.Dataset.from_list(rows) for t, rows in evals.items()})
        got = sel.select(model=model, step_id=1, num_samples=K,
                         **_select_kwargs(tokenizer=smollm_tokenizer))
        model.eval()
        want = Selector(model, smollm_tokenizer, selection_config(scope=scope)).select(
            [{"messages": r["messages"]} for r in chat_pool], chat_targets, k=K).indices
        model.train()
        assert got == want, scope
