"""``trim-fast``: select the few percent of an instruction pool that matter for a target task.

Subcommands: ``select`` (the whole job), ``fingerprint`` / ``score`` / ``pick`` (its stages, each
runnable on its own) and ``demo`` (the whole job on the embedded SmolLM2 and bundled demo data).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import time

from trim_fast.data import DataError

DEFAULT_TARGET_SAMPLE = 100


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="HF model directory, .gguf file or hub id (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", default=None, help="peft LoRA adapter directory, merged before scoring")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto: bf16 on GPU, fp32 on CPU")
    p.add_argument("--max-length", type=int, default=2048,
                   help="longer examples are truncated (counted and reported)")
    p.add_argument("--max-tokens", type=int, default=8192, help="token budget of one forward batch")
    p.add_argument("--scope", default="all", choices=["all", "response", "prompt"],
                   help="whose message content counts")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_bank_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--targets", action="append", default=[], metavar="FILE",
                   help="target examples, one task per file (repeatable); none: in-domain mode")
    p.add_argument("--target-sample", type=int, default=DEFAULT_TARGET_SAMPLE,
                   help="in-domain mode: how many pool examples (seeded) become the targets")
    p.add_argument("--layers", type=int, default=6, help="last L attention layers for saliency")
    p.add_argument("--w-row", type=float, default=0.5, help="weight of row saliency Q")
    p.add_argument("--w-col", type=float, default=0.5, help="weight of column saliency K")
    p.add_argument("--saliency", default="auto",
                   choices=["auto", "triton", "cpu", "torch", "reference"],
                   help="attention-saliency backend; 'reference' runs eager output_attentions")


def _add_score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", action="append", default=[], metavar="FILE", required=True,
                   help="candidate pool file (repeatable), JSONL or Parquet")
    p.add_argument("--fallback", default="nearest", choices=["nearest", "zero", "skip"])
    p.add_argument("--fallback-penalty", type=float, default=0.9, help="lambda of the nearest fallback")
    p.add_argument("--idf", default="pool", choices=["pool", "none"])
    p.add_argument("--w-mean", type=float, default=0.5)
    p.add_argument("--w-max", type=float, default=0.5)
    p.add_argument("--w-coverage", type=float, default=0.05)


def _add_pick_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fraction", type=float, default=0.05, help="keep round(fraction * |P|)")
    g.add_argument("--k", type=int, default=None, help="keep exactly k examples")
    p.add_argument("--combine", default="max", choices=["max", "mean"], help="across task banks")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="trim-fast", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("select", help="fingerprint the targets, score the pool, write the coreset")
    _add_model_args(p), _add_bank_args(p), _add_score_args(p), _add_pick_args(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("fingerprint", help="targets -> bank files (banks/<task>.safetensors)")
    _add_model_args(p), _add_bank_args(p)
    p.add_argument("--pool", action="append", default=[], metavar="FILE",
                   help="in-domain mode only: the pool to sample targets from")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("score", help="bank files + pool -> score table")
    _add_model_args(p), _add_score_args(p)
    p.add_argument("--bank", action="append", required=True, metavar="FILE", help="bank file (repeatable)")
    p.add_argument("--combine", default="max", choices=["max", "mean"])
    p.add_argument("--out", required=True)

    p = sub.add_parser("pick", help="score table + pool -> coreset")
    p.add_argument("--scores", required=True, help="scores.parquet written by 'score' or 'select'")
    p.add_argument("--pool", action="append", required=True, metavar="FILE")
    _add_pick_args(p)
    p.add_argument("--out", required=True)

    p = sub.add_parser("demo", help="the whole job on the embedded SmolLM2 and bundled demo data")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--pool-size", type=int, default=1000)
    p.add_argument("--targets-per-family", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return ap


def _config(args):
    from trim_fast.pipeline import SelectionConfig

    fields = SelectionConfig.__dataclass_fields__
    kw = {k: getattr(args, k) for k in fields if hasattr(args, k) and getattr(args, k) is not None}
    return SelectionConfig(**kw)


def _task_names(paths: list[str]) -> list[str]:
    names, seen = [], collections.Counter()
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        seen[stem] += 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def _log(msg: str) -> None:
    print(f"[trim-fast] {msg}", file=sys.stderr, flush=True)


def _load(args):
    from trim_fast.models.loading import load_model, load_tokenizer

    t0 = time.perf_counter()
    tok = load_tokenizer(args.model)
    model = load_model(args.model, adapter=args.adapter, device=args.device, dtype=args.dtype)
    _log(f"model {args.model or 'embedded SmolLM2-135M-Instruct'} loaded in "
         f"{time.perf_counter() - t0:.1f}s on {next(model.parameters()).device}")
    return model, tok


def _target_tasks(args, pool_examples):
    """``{task: [Example]}``: one task per --targets file, or a seeded pool sample (in-domain)."""
    from trim_fast.data import load_examples

    if args.targets:
        return dict(zip(_task_names(args.targets), (load_examples([p]) for p in args.targets)))
    if not pool_examples:
        raise DataError("no --targets given and no pool to sample in-domain targets from")
    n = min(args.target_sample, len(pool_examples))
    if n < 1:
        raise ValueError("--target-sample must be >= 1")
    picks = sorted(random.Random(args.seed).sample(range(len(pool_examples)), n))
    _log(f"no --targets: in-domain mode, {n} pool examples sampled with seed {args.seed}")
    return {"in_domain": [pool_examples[i] for i in picks]}


def _bank_meta(args, tok) -> dict:
    from trim_fast.data import tokenizer_fingerprint
    from trim_fast.models.loading import model_id

    return {"model_id": model_id(args.model), "adapter": args.adapter,
            "tokenizer_hash": tokenizer_fingerprint(tok)}


def _build_banks(args, cfg, model, tok, tasks) -> dict:
    from trim_fast.pipeline import build_bank, tokenize_examples

    banks = {}
    meta = _bank_meta(args, tok)
    for name, examples in tasks.items():
        tokenized = tokenize_examples(tok, examples, cfg, progress=not args.no_progress)
        banks[name] = build_bank(model, tok, tokenized, cfg, meta=dict(meta, task=name),
                                 progress=not args.no_progress)
        _log(f"task {name}: {len(examples)} targets -> {len(banks[name].classes)} fingerprints")
    return banks


def _task_families(tasks: dict) -> dict:
    """The ``family`` field shared by most targets of each task, where records carry one."""
    out = {}
    for name, examples in tasks.items():
        fams = collections.Counter(e.meta.get("family") for e in examples if e.meta.get("family"))
        if fams:
            out[name] = fams.most_common(1)[0][0]
    return out


def _score_and_write(args, cfg, model, tok, banks, pool_examples, out_dir, extra_summary=None,
                     task_families=None):
    from trim_fast import outputs
    from trim_fast.pipeline import pool_idf, score_pool, select, selection_name, tokenize_examples

    t0 = time.perf_counter()
    tokenized = tokenize_examples(tok, pool_examples, cfg, progress=not args.no_progress)
    n_trunc = sum(1 for t in tokenized if t.truncated)
    if n_trunc:
        _log(f"{n_trunc} pool example(s) longer than --max-length {cfg.max_length} were truncated "
             "(listed in the score table, column 'truncated')")
    idf_table = pool_idf(tokenized, len(tok), cfg)
    scores = score_pool(model, tok, tokenized, banks, cfg, idf_table=idf_table,
                        progress=not args.no_progress)
    sel = select(scores, cfg)
    rows = outputs.score_rows(pool_examples, tokenized, scores, sel.combined, sel.indices)
    outputs.write_table(rows, out_dir)
    coreset = os.path.join(out_dir, selection_name(cfg))
    outputs.write_coreset(pool_examples, sel.indices, coreset)
    summary = _summary(cfg, pool_examples, tokenized, scores, sel, task_families or {})
    summary["seconds_total"] = round(time.perf_counter() - t0, 3)
    summary["outputs"] = {"coreset": os.path.basename(coreset), "table": ["scores.parquet", "sorted.csv"],
                          "report": "report.png"}
    summary.update(extra_summary or {})
    outputs.write_json(summary, os.path.join(out_dir, "summary.json"))
    outputs.write_report(rows, os.path.join(out_dir, "report.png"))
    if sel.unscored:
        _log(f"{len(sel.unscored)} pool example(s) had no scored token (score -inf, never "
             "selected); see summary.json 'unscored'")
    _log(f"selected {len(sel.indices)} of {len(pool_examples)} -> {coreset}")
    return summary


def _summary(cfg, pool_examples, tokenized, scores, sel, task_families) -> dict:
    from dataclasses import asdict

    from trim_fast.selection import select_top_k

    by_source = collections.Counter(pool_examples[i].source for i in sel.indices)
    summary = {
        "config": asdict(cfg),
        "pool_size": len(pool_examples),
        "k": sel.k,
        "selected": len(sel.indices),
        "selected_by_source": dict(by_source),
        "unscored": {"count": len(sel.unscored),
                     "ids": [pool_examples[i].id for i in sel.unscored[:100]]},
        "truncated": sum(1 for t in tokenized if t.truncated),
        "tasks": scores.tasks,
        "scoring": {"tokens": scores.tokens, "seconds": round(scores.seconds, 3),
                    "tokens_per_s": round(scores.tokens / max(scores.seconds, 1e-9), 1)},
    }
    fams = [e.meta.get("family") for e in pool_examples]
    if task_families and any(fams):
        pool_share = collections.Counter(fams)
        precision = {}
        for t_i, task in enumerate(scores.tasks):
            fam = task_families.get(task)
            if fam is None:
                continue
            top = select_top_k(scores.score[t_i], sel.k).tolist()
            hits = sum(1 for i in top if fams[i] == fam)
            precision[task] = {"family": fam, "precision": round(hits / max(1, len(top)), 4),
                               "family_share_of_pool": round(pool_share[fam] / len(fams), 4),
                               "k": len(top)}
        summary["precision_per_task"] = precision
    return summary


def cmd_select(args) -> int:
    from trim_fast import outputs
    from trim_fast.data import load_examples

    cfg = _config(args)
    out_dir = outputs.ensure_out_dir(args.out)
    pool = load_examples(args.pool)
    model, tok = _load(args)
    tasks = _target_tasks(args, pool)
    banks = _build_banks(args, cfg, model, tok, tasks)
    _score_and_write(args, cfg, model, tok, banks, pool, out_dir, task_families=_task_families(tasks))
    return 0


def cmd_fingerprint(args) -> int:
    from trim_fast import outputs
    from trim_fast.data import load_examples

    cfg = _config(args)
    out_dir = outputs.ensure_out_dir(args.out)
    os.makedirs(os.path.join(out_dir, "banks"), exist_ok=True)
    pool = load_examples(args.pool) if (args.pool and not args.targets) else []
    model, tok = _load(args)
    banks = _build_banks(args, cfg, model, tok, _target_tasks(args, pool))
    for name, bank in banks.items():
        path = os.path.join(out_dir, "banks", f"{name}.safetensors")
        bank.save(path)
        _log(f"wrote {path}")
    return 0


def cmd_score(args) -> int:
    from trim_fast import outputs
    from trim_fast.data import load_examples, tokenizer_fingerprint
    from trim_fast.fingerprints import FingerprintBank

    out_dir = outputs.ensure_out_dir(args.out)
    pool = load_examples(args.pool)
    model, tok = _load(args)
    expect = {"tokenizer_hash": tokenizer_fingerprint(tok)}
    banks = {}
    for name, path in zip(_task_names(args.bank), args.bank):
        banks[name] = FingerprintBank.load(path, expect=expect)
    first = next(iter(banks.values())).meta
    for k in ("layers", "w_row", "w_col", "scope", "max_length"):
        if k in first:
            setattr(args, k, first[k])
    if first.get("scope") and args.scope != first["scope"]:
        _log(f"using the banks' scope {first['scope']!r}")
    args.k, args.fraction = None, 0.05
    cfg = _config(args)
    _score_and_write(args, cfg, model, tok, banks, pool, out_dir)
    return 0


def cmd_pick(args) -> int:
    import pyarrow.parquet as pq
    import torch

    from trim_fast import outputs
    from trim_fast.data import load_examples
    from trim_fast.selection import combine_tasks, num_selected, select_top_k

    out_dir = outputs.ensure_out_dir(args.out)
    table = pq.read_table(args.scores).to_pylist()
    pool = load_examples(args.pool)
    position = {e.id: i for i, e in enumerate(pool)}
    missing = [r["id"] for r in table if r["id"] not in position]
    if missing or len(table) != len(pool):
        raise DataError(f"{args.scores}: the score table does not match the pool files "
                        f"({len(table)} rows vs {len(pool)} examples; {len(missing)} unknown ids, "
                        f"e.g. {missing[:3]})")
    task_cols = sorted(c for c in table[0] if c.startswith("score["))
    cols = task_cols or ["score"]
    by_index = sorted(table, key=lambda r: position[r["id"]])
    per_task = torch.tensor([[float(r[c]) if r[c] is not None else float("nan") for r in by_index]
                             for c in cols], dtype=torch.float32)
    combined = combine_tasks(per_task, args.combine)
    k = num_selected(len(pool), fraction=args.fraction, k=args.k)
    chosen = select_top_k(combined, k).tolist()
    name = f"top_k{args.k}.jsonl" if args.k is not None else f"top_p{args.fraction:g}.jsonl"
    outputs.write_coreset(pool, chosen, os.path.join(out_dir, name))
    _log(f"selected {len(chosen)} of {len(pool)} -> {os.path.join(out_dir, name)}")
    return 0


def cmd_demo(args) -> int:
    from trim_fast import outputs
    from trim_fast.data import load_examples
    from trim_fast.demo.generate import generate

    out_dir = outputs.ensure_out_dir(args.out)
    manifest = generate(os.path.join(out_dir, "data"), pool_size=args.pool_size,
                        targets_per_family=args.targets_per_family, seed=args.seed)
    ns = build_parser().parse_args(["select", "--out", out_dir, *sum((["--pool", p] for p in manifest["pool"]), []),
                                    *sum((["--targets", p] for p in manifest["targets"].values()), [])])
    ns.device, ns.no_progress, ns.seed = args.device, args.no_progress, args.seed
    cfg = _config(ns)
    pool = load_examples(ns.pool)
    model, tok = _load(ns)
    tasks = _target_tasks(ns, pool)
    banks = _build_banks(ns, cfg, model, tok, tasks)
    summary = _score_and_write(ns, cfg, model, tok, banks, pool, out_dir,
                               task_families=_task_families(tasks),
                               extra_summary={"demo": {"family_counts": manifest["family_counts"]}})
    print(f"{'task':<20} {'precision@5%':>12} {'family share':>13}")
    for task, p in summary.get("precision_per_task", {}).items():
        print(f"{task:<20} {p['precision']:>12.3f} {p['family_share_of_pool']:>13.3f}")
    print(f"outputs in {out_dir}")
    return 0


COMMANDS = {"select": cmd_select, "fingerprint": cmd_fingerprint, "score": cmd_score,
            "pick": cmd_pick, "demo": cmd_demo}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DataError, ValueError, OSError, RuntimeError) as exc:
        print(f"trim-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
