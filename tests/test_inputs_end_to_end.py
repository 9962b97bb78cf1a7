"""Every input kind and record shape through ``trim-fast select`` on a tiny model: the run
completes, nothing is dropped (each selected record comes back exactly as it was given, fields
the shape does not know included), and the record shapes' own fields are counted."""
import gzip
import json
import os

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from trim_fast.cli import main

QUESTIONS = [("How many meters is {} km?", "{} km is {} meters."),
             ("Sort these numbers: {}, 3, 1", "1, 3, {}"),
             ("Translate 'good {}' to French.", "bon {}")]


def _qa(i):
    q, a = QUESTIONS[i % 3]
    return q.format(i), a.format(i, i * 1000) if "meters" in a else a.format(i)


def chat(i):
    q, a = _qa(i)
    return {"id": f"c{i}", "messages": [{"role": "user", "content": q},
                                        {"role": "assistant", "content": a}], "note": {"k": [i]}}


def openai_parts_and_tools(i):
    q, a = _qa(i)
    return {"id": f"o{i}", "tools": [{"type": "function", "function": {
                "name": "convert", "description": "Convert units",
                "parameters": {"type": "object", "properties": {"value": {"type": "number"}}}}}],
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "Be exact."}]},
                {"role": "user", "content": [{"type": "text", "text": q}]},
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": f"call{i}", "type": "function",
                    "function": {"name": "convert", "arguments": json.dumps({"value": i})}}]},
                {"role": "tool", "tool_call_id": f"call{i}", "content": json.dumps({"result": i})},
                {"role": "assistant", "content": [{"type": "text", "text": a}]}]}


def trl_conversational(i):
    q, a = _qa(i)
    return {"id": f"t{i}", "prompt": [{"role": "system", "content": "Answer briefly."},
                                      {"role": "user", "content": q}],
            "completion": [{"role": "assistant", "content": a}]}


def lf_sharegpt(i):
    q, a = _qa(i)
    return {"id": f"s{i}", "system": "You are a helpful tool user.",
            "tools": json.dumps([{"name": "convert", "description": "Convert units",
                                  "parameters": {"type": "object", "properties": {}}}]),
            "conversations": [{"from": "human", "value": q},
                              {"from": "function_call", "value": json.dumps(
                                  {"name": "convert", "arguments": {"value": i}})},
                              {"from": "observation", "value": json.dumps({"result": i})},
                              {"from": "gpt", "value": a}], "category": "units"}


def lf_alpaca(i):
    q, a = _qa(i)
    return {"id": f"a{i}", "instruction": q, "input": "", "output": a,
            "system": "You are a careful assistant.",
            "history": [[f"Warm-up question {i}?", f"Warm-up answer {i}."]], "source": "kept"}


SHAPES = {"chat": chat, "openai": openai_parts_and_tools, "trl": trl_conversational,
          "lf_sharegpt": lf_sharegpt, "lf_alpaca": lf_alpaca}


def _jsonl(path, records, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def _select(model, tmp_path, pool_args, targets, n, *extra):
    out = tmp_path / "out"
    assert main(["select", "--model", model, *pool_args, "--targets", targets,
                 "--k", str(n), "--out", str(out), "--no-progress", *extra]) == 0
    return out


def _coreset(out, n):
    with open(out / f"top_k{n}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_record_shape_comes_back_unchanged(shape, tmp_path, tiny_model_dir):
    make = SHAPES[shape]
    pool = [make(i) for i in range(9)]
    targets = _jsonl(tmp_path / "targets.jsonl", [make(100 + 3 * i) for i in range(3)])
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(pool))  # a JSON array, as LLaMA-Factory keeps its data
    out = _select(tiny_model_dir, tmp_path, ["--pool", str(path)], targets, 9)
    back = _coreset(out, 9)
    assert sorted(back, key=lambda r: r["id"]) == sorted(pool, key=lambda r: r["id"])
    table = pq.read_table(out / "scores.parquet").to_pylist()
    assert all(r["n_counted"] > 0 for r in table)


def test_the_fields_of_a_shape_are_counted(tmp_path, tiny_model_dir):
    """LLaMA-Factory's system and history, and tool calls, are scored text, not dropped."""
    plain = [{"id": f"a{i}", "instruction": _qa(i)[0], "output": _qa(i)[1]} for i in range(3)]
    rich = [dict(p, id=f"r{i}", system="You are a careful assistant.",
                 history=[["An earlier question?", "An earlier answer."]]) for i, p in enumerate(plain)]
    targets = _jsonl(tmp_path / "t.jsonl", [lf_alpaca(50)])
    out = _select(tiny_model_dir, tmp_path, ["--pool", _jsonl(tmp_path / "p.jsonl", plain + rich)], targets, 6)
    counted = {r["id"]: r["n_counted"] for r in pq.read_table(out / "scores.parquet").to_pylist()}
    for i in range(3):
        assert counted[f"r{i}"] > counted[f"a{i}"] + 10


def test_pre_tokenized_rows(tmp_path, smollm_tokenizer, tiny_model_dir):
    rows = []
    for i in range(8):
        q, a = _qa(i)
        prompt = smollm_tokenizer(q, add_special_tokens=False)["input_ids"]
        answer = smollm_tokenizer(" " + a, add_special_tokens=False)["input_ids"]
        rows.append({"id": f"p{i}", "input_ids": prompt + answer,
                     "attention_mask": [1] * (len(prompt) + len(answer)),
                     "labels": [-100] * len(prompt) + answer, "split": "train"})
    targets = _jsonl(tmp_path / "t.jsonl", rows[:2])
    out = _select(tiny_model_dir, tmp_path, ["--pool", _jsonl(tmp_path / "rows.jsonl", rows)], targets, 8)
    assert sorted(_coreset(out, 8), key=lambda r: r["id"]) == rows
    counted = {r["id"]: r["n_counted"] for r in pq.read_table(out / "scores.parquet").to_pylist()}
    assert all(counted[r["id"]] == sum(1 for x in r["labels"] if x != -100) for r in rows)


def test_every_input_kind_reads_the_same_records(tmp_path, monkeypatch, tiny_model_dir):
    records = [chat(i) for i in range(12)]
    targets = _jsonl(tmp_path / "t.jsonl", [chat(100), chat(103)])
    kinds = {}
    kinds["jsonl"] = [_jsonl(tmp_path / "p.jsonl", records)]
    kinds["jsonl.gz"] = [_jsonl(tmp_path / "p.jsonl.gz", records, gzip.open)]
    zst = tmp_path / "p.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps(r) + "\n" for r in records).encode()))
    kinds["jsonl.zst"] = [str(zst)]
    os.makedirs(tmp_path / "shards")
    for s in range(3):
        _jsonl(tmp_path / "shards" / f"part-{s}.jsonl", records[4 * s: 4 * s + 4])
    kinds["glob"] = [str(tmp_path / "shards" / "part-*.jsonl")]
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    kinds["save_to_disk"] = [str(tmp_path / "saved")]
    monkeypatch.setattr(datasets, "load_dataset",  # a hub id, without the network
                        lambda name, subset=None, **kw: datasets.Dataset.from_list(records)
                        .to_iterable_dataset())
    kinds["hub"] = ["someorg/some-pool", "--split", "train"]
    tables = {}
    for kind, source in kinds.items():
        out = tmp_path / f"out-{kind.replace('.', '_')}"
        assert main(["select", "--model", tiny_model_dir, "--pool", *source, "--targets", targets,
                     "--k", "12", "--out", str(out), "--no-progress"]) == 0, kind
        back = _coreset(out, 12)
        assert sorted(json.dumps(r, sort_keys=True) for r in back) == \
            sorted(json.dumps(r, sort_keys=True) for r in records), kind
        tables[kind] = [(r["id"], r["score"]) for r in pq.read_table(out / "scores.parquet").to_pylist()]
    assert all(t == tables["jsonl"] for t in tables.values())  # same records, same scores


def test_parquet_pool_and_dataset_output(tmp_path, tiny_model_dir):
    from trim_fast import Selector

    records = [lf_alpaca(i) for i in range(10)]
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    targets = _jsonl(tmp_path / "t.jsonl", [lf_alpaca(40)])
    out = _select(tiny_model_dir, tmp_path, ["--pool", str(path)], targets, 4)
    parquet_back = pq.read_table(out / "top_k4.parquet").to_pylist()
    jsonl_out = tmp_path / "j"
    assert main(["select", "--model", tiny_model_dir, "--pool", str(path), "--targets", targets,
                 "--k", "4", "--out", str(jsonl_out), "--output-format", "jsonl", "--no-progress"]) == 0
    assert parquet_back == _coreset(jsonl_out, 4)
    # a datasets.Dataset in gives a datasets.Dataset out, equal in content to the JSONL path
    picked = Selector(tiny_model_dir).select(datasets.Dataset.from_list(records),
                                          [lf_alpaca(40)], k=4).to_dataset()
    assert [{k: v for k, v in r.items() if k != "trim_score"} for r in picked] == \
        _coreset(jsonl_out, 4)
