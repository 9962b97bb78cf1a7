"""The library as a frontend author uses it: in-memory records, loaded models (plain, peft,
wrapped), datasets and pre-tokenized rows, scored exactly as ``trim-fast select`` scores the same
data written to files; and the layering that keeps the library importable piece by piece."""
import ast
import json
import os
import pathlib
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch

from trim_fast.cli import main
from trim_fast.demo.generate import FAMILIES, make_example

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "trim_fast"


def chat_records(n, seed, prefix):
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        family = FAMILIES[i % len(FAMILIES)]
        q, a = make_example(family, rng)
        out.append({"id": f"{prefix}{i}", "family": family,
                    "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return out


@pytest.fixture(scope="module")
def data():
    return chat_records(40, 1, "p"), [r for r in chat_records(24, 2, "t") if r["family"] == "arithmetic"][:4]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def cli_scores(tmp_path, model_dir, pool, targets, *extra):
    """``trim-fast select`` on the same records written to JSONL: the score of each pool index."""
    out = tmp_path / "cli"
    assert main(["select", "--model", model_dir, "--pool", write_jsonl(tmp_path / "pool.jsonl", pool),
                 "--targets", write_jsonl(tmp_path / "targets.jsonl", targets), "--out", str(out),
                 "--no-progress", *extra]) == 0
    table = pq.read_table(out / "scores.parquet").to_pylist()
    scores = torch.empty(len(table))
    for row in table:
        scores[row["index"]] = row["score"]
    return scores, out


def test_frontend_in_memory_records_equal_the_cli_bit_for_bit(tmp_path, tiny_model_dir, data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trim_fast import Selector

    pool, targets = data
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    result = Selector(model, tokenizer).select(pool, targets)

    want, out = cli_scores(tmp_path, tiny_model_dir, pool, targets)
    assert torch.equal(result.combined, want)
    assert result.k == 2 and result.indices == [
        r["index"] for r in pq.read_table(out / "scores.parquet").to_pylist() if r["selected"]]
    assert [r["id"] for r in result.records()] == [pool[i]["id"] for i in result.indices]
    # the scores come with their parts, index-aligned with the pool
    assert result.scores.ids == [r["id"] for r in pool] and result.scores.mean.shape == (1, 40)


def test_frontend_peft_model_equals_cli_adapter(tmp_path, tiny_model_dir, data):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trim_fast import Selector

    torch.manual_seed(3)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a trained adapter is not zero
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    lora.save_pretrained(tmp_path / "adapter")
    pool, targets = data
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                           tmp_path / "adapter").eval()
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    result = Selector(peft_model, AutoTokenizer.from_pretrained(tiny_model_dir)).select(pool, targets)

    want, _ = cli_scores(tmp_path, tiny_model_dir, pool, targets, "--adapter", str(tmp_path / "adapter"))
    assert torch.equal(result.combined, want)
    (tmp_path / "plain").mkdir()
    plain, _ = cli_scores(tmp_path / "plain", tiny_model_dir, pool, targets)
    assert not torch.equal(result.combined, plain)  # the adapter mattered
    assert all(torch.equal(p, before[n]) for n, p in peft_model.named_parameters())  # restored


def test_dataset_and_pretokenized_rows_score_like_records(tmp_path, tiny_model_dir, data):
    import datasets

    from trim_fast import Selector
    from trim_fast.data import open_records, tokenize_example

    pool, targets = data
    selector = Selector(tiny_model_dir)
    banks = selector.fingerprint(targets, pool=pool)
    want = selector.score(pool, banks).score
    ds = datasets.Dataset.from_list(pool)
    assert torch.equal(selector.score(ds, banks).score, want)
    # pre-tokenized as LLaMA-Factory / DataFlex hand rows over: labels -100 where nothing counts
    rows = []
    for ex in open_records(pool):
        t = tokenize_example(selector.tokenizer, ex)
        rows.append({"id": ex.id, "input_ids": t.ids, "attention_mask": [1] * len(t.ids),
                     "labels": [i if c else -100 for i, c in zip(t.ids, t.counted)]})
    assert torch.equal(selector.score(rows, banks).score, want)
    result = selector.select(ds, targets)
    picked = result.to_dataset()
    assert picked["id"] == [pool[i]["id"] for i in result.indices]
    assert picked["trim_score"] == [float(result.combined[i]) for i in result.indices]
    # and the CLI on the pre-tokenized rows written to JSONL gives these scores too
    got, _ = cli_scores(tmp_path, tiny_model_dir, rows, targets)
    assert torch.equal(got, want[0])


def test_wrapped_and_training_models(tiny_model_dir, data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trim_fast import Selector

    pool, targets = data
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    want = Selector(model, tok).select(pool[:10], targets).combined
    wrapped = torch.nn.DataParallel(model)  # .module, as DDP and accelerate hold it
    assert torch.equal(Selector(wrapped, tok).select(pool[:10], targets).combined, want)
    assert Selector(wrapped, tok).model_name == Selector(model, tok).model_name == tiny_model_dir
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        Selector(model, tok).select(pool[:10], targets)
    with pytest.raises(TypeError, match="tokenizer"):
        Selector(model)


def test_banks_that_do_not_fit_are_refused(tiny_model_dir, data, tmp_path):
    from trim_fast import SelectionConfig, Selector

    pool, targets = data
    selector = Selector(tiny_model_dir)
    bank = selector.fingerprint(targets, pool=pool)["targets"]
    with pytest.raises(ValueError, match="built with scope='all', this run scores with scope='response'"):
        Selector(selector.model, selector.tokenizer, SelectionConfig(scope="response")).score(pool, bank)
    other = Selector(selector.model, selector.tokenizer,
                     SelectionConfig(layers=1)).fingerprint(targets, task="other", pool=pool)
    with pytest.raises(ValueError, match="different settings.*layers"):
        selector.score(pool, {**{"targets": bank}, **other})
    bank.meta["tokenizer_digest"] = "0" * 16
    with pytest.raises(ValueError, match="another tokenizer"):
        selector.score(pool, bank)


def test_eval_scores_are_the_select_commands(tmp_path, tiny_model_dir, demo_data):
    """The evaluation's TRIM scores on the demo pool equal ``trim-fast select``'s, bit for bit."""
    from trim_fast import Selector
    from trim_fast.data import open_records
    from trim_fast.evaluation.quality import run_quality

    task = demo_data["targets"]["arithmetic"]
    result = run_quality(Selector(tiny_model_dir), open_records(demo_data["pool"]),
                         {"arithmetic": open_records(task)}, study=False)
    out = tmp_path / "sel"
    assert main(["select", "--model", tiny_model_dir, *sum((["--pool", p] for p in demo_data["pool"]), []),
                 "--targets", task, "--out", str(out), "--no-progress"]) == 0
    table = pq.read_table(out / "scores.parquet").to_pylist()
    by_index = sorted(table, key=lambda r: r["index"])
    assert [r["score"] for r in by_index] == result["trim_scores"][0]


# --- layering -----------------------------------------------------------------------------------


def module_imports() -> dict[str, set[str]]:
    """Every trim_fast module -> the trim_fast modules it names in an import anywhere (top level
    or inside functions). A package's own ``__init__`` re-exporting its modules is not counted
    as those modules importing it back."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name and t != "trim_fast":
                    deps.add(t)
        graph[name] = deps
    return graph


def test_no_module_imports_a_module_that_imports_it_back():
    graph = module_imports()
    seen_cycles = []

    def reach(start):
        stack, found = [start], set()
        while stack:
            for d in graph[stack.pop()]:
                if d not in found:
                    found.add(d)
                    stack.append(d)
        return found

    for name in graph:
        if name in reach(name):
            seen_cycles.append(name)
    assert not seen_cycles, f"modules on an import cycle: {sorted(seen_cycles)}"


def test_the_oracle_imports_only_torch_and_the_types():
    tree = ast.parse((PACKAGE / "reference.py").read_text())
    imported = {n.module if isinstance(n, ast.ImportFrom) else a.name
                for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [None])}
    ours = {m for m in imported if m and m.startswith("trim_fast")}
    assert ours == {"trim_fast.types", "trim_fast.validation"}
    assert not any(m.startswith("trim_fast.ops") for m in ours)


def test_ops_import_neither_the_model_side_nor_transformers():
    code = "import sys, trim_fast.ops; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('transformers', 'peft', 'datasets') or m.startswith(('trim_fast.bank', 'trim_fast.cli', " \
           "'trim_fast.capture', 'trim_fast.api'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert out.stdout.strip() == "[]", out.stdout
    graph = module_imports()
    for name, deps in graph.items():
        if name.startswith("trim_fast.ops"):
            bad = {d for d in deps if not d.startswith(("trim_fast.ops", "trim_fast.types",
                                                        "trim_fast.validation", "trim_fast._ext",
                                                        "trim_fast.reference"))}
            assert not bad, f"{name} imports {bad}"


def test_library_calls_print_nothing_and_log_to_trim_fast(tiny_model_dir, data, capsys, caplog):
    import logging

    from trim_fast import Selector

    pool, targets = data
    with caplog.at_level(logging.INFO, logger="trim_fast"):
        Selector(tiny_model_dir).select(pool[:8], targets)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert any(r.name.startswith("trim_fast") for r in caplog.records)


def test_weights_digest_follows_the_weights(tiny_model_dir, data):
    """The bank's model digest is computed once per select (fingerprint and score share it),
    and anew at the next call, after a training step changed the weights (a frontend trains
    between selections)."""
    from unittest import mock

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trim_fast import Selector
    from trim_fast.models.digest import weights_digest

    pool, targets = data
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    selector = Selector(model, AutoTokenizer.from_pretrained(tiny_model_dir))
    with mock.patch("trim_fast.api.weights_digest", wraps=weights_digest) as digest:
        first = selector.select(pool[:6], targets).banks["targets"].meta["model"]["digest"]
        assert digest.call_count == 1  # fingerprint and score share it
        with torch.no_grad():
            next(model.parameters()).data.add_(1e-2)  # in place, as an optimizer step or EMA swap
        banks = selector.fingerprint(targets, pool=pool)
        assert digest.call_count == 2 and banks["targets"].meta["model"]["digest"] != first


def test_forward_cache_gives_the_same_numbers_and_refuses_other_weights_or_dtype(tiny_model_dir, data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trim_fast import ForwardCache, Selector

    pool, targets = data
    pool = pool[:12]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    fresh = Selector(model, tok).select(pool, targets, k=3)
    cache = ForwardCache()
    first = Selector(model, tok).select(pool, targets, k=3, forward_cache=cache)
    filled = len(cache)
    again = Selector(model, tok).select(pool, targets, k=3, forward_cache=cache)
    assert filled > 0 and len(cache) == filled  # the second call forwarded nothing new
    for result in (first, again):
        assert torch.equal(result.scores.score, fresh.scores.score)
    model.to(torch.bfloat16)  # the same weights to bf16 resolution: another forward
    with pytest.raises(ValueError, match="ForwardCache holds hidden states of other weights or "
                                         "another dtype"):
        Selector(model, tok).select(pool, targets, k=3, forward_cache=cache)
    model.to(torch.float32)
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    with pytest.raises(ValueError, match="ForwardCache holds hidden states"):
        Selector(model, tok).select(pool, targets, k=3, forward_cache=cache)


def test_a_list_of_target_files_is_one_task_per_file_as_on_the_command_line(tiny_model_dir, data,
                                                                           tmp_path):
    from trim_fast import Selector

    pool, targets = data
    paths = []
    for name, recs in (("arith", targets[:2]), ("more", targets[2:])):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
        paths.append(str(path))
    selector = Selector(tiny_model_dir)
    by_list = selector.select(pool[:10], paths, k=3)
    by_mapping = selector.select(pool[:10], {"arith": targets[:2], "more": targets[2:]}, k=3)
    assert sorted(by_list.banks) == ["arith", "more"]
    assert by_list.scores.tasks == by_mapping.scores.tasks
    assert torch.equal(by_list.scores.score, by_mapping.scores.score)
