"""``trim-fast``: select the few percent of an instruction pool that matter for a target task.

Subcommands: ``select`` (the whole job), ``fingerprint`` / ``score`` / ``pick`` (its stages, each
runnable on its own), ``warmup`` (a LoRA warmup adapter, SPEC 5), ``demo`` (the whole job on the
embedded SmolLM2 and bundled demo data) and ``eval`` (selection quality against baselines).
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import time

from trim_fast.data import DataError
from trim_fast.warmup import add_warmup_args, cmd_warmup, maybe_warmup_for_select

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
    p.add_argument("--chunk-size", type=int, default=4096,
                   help="pool examples per resumable shard (and per unit of work across ranks)")
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
    add_warmup_args(p, for_select=True)

    p = sub.add_parser("warmup", help="train a LoRA warmup adapter on a seeded pool subset (SPEC 5)")
    add_warmup_args(p)

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
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", action="store_true",
                   help="then LoRA-warm the model on 5%% of the pool, select again, and record both "
                        "runs' precision per family in summary.json")
    p.add_argument("--warmup-args", default="",
                   help="extra warmup flags for the second run, e.g. '--lora-r 16 --warmup-epochs 2'")

    p = sub.add_parser("eval", help="selection quality on a labelled pool: TRIM against random, "
                       "representation similarity and BM25; ablations; a downstream check")
    p.add_argument("--model", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--pool", action="append", default=[], metavar="FILE",
                   help="labelled pool (records carry 'family'); default: the demo generator's")
    p.add_argument("--targets", action="append", default=[], metavar="FILE",
                   help="one file per family (its records' 'family' names it); default: demo targets")
    p.add_argument("--pool-size", type=int, default=1000, help="demo pool size")
    p.add_argument("--targets-per-family", type=int, default=8)
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--downstream", default="unit_conversion",
                   help="family for the LoRA downstream check ('none' to skip)")
    p.add_argument("--heldout", default=None,
                   help="held-out examples of the downstream family (default: generated for the demo)")
    p.add_argument("--heldout-size", type=int, default=32)
    p.add_argument("--downstream-epochs", type=int, default=2)
    p.add_argument("--downstream-lr", type=float, default=2e-4)
    p.add_argument("--downstream-r", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
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


def _target_tasks(args, pool_paths):
    """``{task: [Example]}``: one task per --targets file, or a seeded pool sample (in-domain)."""
    from trim_fast.data import load_examples
    from trim_fast.pool import iter_pool_chunks, read_selected

    if args.targets:
        return dict(zip(_task_names(args.targets), (load_examples([p]) for p in args.targets)))
    if not pool_paths:
        raise DataError("no --targets given and no --pool to sample in-domain targets from")
    if args.target_sample < 1:
        raise ValueError("--target-sample must be >= 1")
    size = sum(len(chunk) for _, _, chunk in iter_pool_chunks(pool_paths, 4096))
    n = min(args.target_sample, size)
    picks = sorted(random.Random(args.seed).sample(range(size), n))
    _log(f"no --targets: in-domain mode, {n} of {size} pool examples sampled with seed {args.seed}")
    return {"in_domain": read_selected(pool_paths, picks)}


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


def _manifest(args, cfg, model, tok, banks) -> dict:
    from trim_fast.data import tokenizer_fingerprint
    from trim_fast.models.loading import model_id
    from trim_fast.pool import bank_digest, pool_signature

    adapter = None
    if args.adapter:
        files = sorted(os.path.join(args.adapter, f) for f in os.listdir(args.adapter))
        adapter = pool_signature([f for f in files if os.path.isfile(f)])
    param = next(model.parameters())
    return {"model": model_id(args.model), "adapter": adapter,
            "dtype": str(param.dtype).replace("torch.", ""), "device": param.device.type,
            "tokenizer_hash": tokenizer_fingerprint(tok),
            "banks": {name: bank_digest(b) for name, b in banks.items()},
            "pool": pool_signature(args.pool), "scoring": cfg.scoring_params()}


def _score_and_write(args, cfg, model, tok, banks, out_dir, ctx, *, write_coreset=True,
                     extra_summary=None, task_families=None, warmup=None):
    from trim_fast import outputs
    from trim_fast.pipeline import select, selection_name
    from trim_fast.pool import read_selected, score_pool

    t0 = time.perf_counter()
    scored = score_pool(model, tok, args.pool, banks, cfg, out_dir,
                        manifest=_manifest(args, cfg, model, tok, banks), ctx=ctx,
                        progress=not args.no_progress)
    if not ctx.is_main:
        return None
    n_trunc = int((scored.truncated > 0).sum())
    if n_trunc:
        _log(f"{n_trunc} pool example(s) longer than --max-length {cfg.max_length} were truncated "
             "(counted in summary.json; column 'truncated' of the score table)")
    sel = select(scored, cfg)
    cols = outputs.score_columns(scored, sel.combined, sel.indices)
    outputs.write_table(cols, out_dir)
    coreset = None
    if write_coreset:
        coreset = os.path.join(out_dir, selection_name(cfg.fraction, cfg.k))
        outputs.write_coreset(read_selected(args.pool, sel.indices), coreset)
        _log(f"selected {len(sel.indices)} of {len(scored.ids)} -> {coreset}")
    summary = _summary(cfg, scored, sel, task_families or {})
    summary["seconds_total"] = round(time.perf_counter() - t0, 3)
    summary["outputs"] = {"coreset": coreset and os.path.basename(coreset),
                          "table": ["scores.parquet", "sorted.csv"], "report": "report.png"}
    if warmup is not None:
        summary["warmup"] = {"adapter": warmup.adapter_dir, "subset_size": len(warmup.subset_ids),
                             "seconds": round(warmup.seconds, 3), "final_loss": warmup.losses[-1]}
    summary.update(extra_summary or {})
    outputs.write_json(summary, os.path.join(out_dir, "summary.json"))
    outputs.write_report(cols, os.path.join(out_dir, "report.png"),
                         loss_curves={"warmup": warmup.losses} if warmup is not None else None)
    if sel.unscored:
        _log(f"{len(sel.unscored)} pool example(s) had no scored token (score -inf, never "
             "selected); see summary.json 'unscored'")
    return summary


def _summary(cfg, scored, sel, task_families) -> dict:
    from dataclasses import asdict

    from trim_fast.selection import select_top_k

    by_source = collections.Counter(scored.sources[i] for i in sel.indices)
    summary = {
        "config": asdict(cfg),
        "pool_size": len(scored.ids),
        "k": sel.k,
        "selected": len(sel.indices),
        "selected_by_source": dict(by_source),
        "unscored": {"count": len(sel.unscored), "ids": [scored.ids[i] for i in sel.unscored[:100]]},
        "truncated": int((scored.truncated > 0).sum()),
        "tasks": scored.tasks,
        "scoring": {"tokens": scored.tokens, "forward_seconds": round(scored.seconds_forward, 3),
                    "tokens_per_s": round(scored.tokens / max(scored.seconds_forward, 1e-9), 1),
                    "chunks_reused": scored.chunks_reused},
    }
    fams = scored.families
    if task_families and any(f is not None for f in fams):
        pool_share = collections.Counter(fams)
        precision = {}
        for t_i, task in enumerate(scored.tasks):
            fam = task_families.get(task)
            if fam is None:
                continue
            top = select_top_k(scored.score[t_i], sel.k).tolist()
            hits = sum(1 for i in top if fams[i] == fam)
            precision[task] = {"family": fam, "precision": round(hits / max(1, len(top)), 4),
                               "family_share_of_pool": round(pool_share[fam] / len(fams), 4),
                               "k": len(top)}
        summary["precision_per_task"] = precision
    return summary


def _banks_everywhere(args, cfg, model, tok, tasks, ctx) -> dict:
    """Rank 0 builds the banks and sends them to the other ranks, so all score with the same
    bank bit for bit (object collectives between our own processes; no file is unpickled)."""
    return ctx.on_main(lambda: _build_banks(args, cfg, model, tok, tasks))


def _init(args):
    from trim_fast.distributed import init_distributed

    ctx, args.device = init_distributed(args.device)
    return ctx


def cmd_select(args) -> int:
    from trim_fast import outputs

    ctx = _init(args)
    try:
        cfg = _config(args)
        out_dir = outputs.ensure_out_dir(args.out)
        warm = None
        if args.warmup:  # rank 0 trains; every rank then merges the same adapter (shared --out)
            from trim_fast.data import load_examples

            warm = ctx.on_main(lambda: maybe_warmup_for_select(args, load_examples(args.pool), out_dir))
            args.adapter = warm.adapter_dir
        model, tok = _load(args)
        tasks = _target_tasks(args, args.pool)
        banks = _banks_everywhere(args, cfg, model, tok, tasks, ctx)
        _score_and_write(args, cfg, model, tok, banks, out_dir, ctx,
                         task_families=_task_families(tasks), warmup=warm)
    finally:
        ctx.close()
    return 0


def cmd_fingerprint(args) -> int:
    from trim_fast import outputs

    cfg = _config(args)
    out_dir = outputs.ensure_out_dir(args.out)
    os.makedirs(os.path.join(out_dir, "banks"), exist_ok=True)
    model, tok = _load(args)
    banks = _build_banks(args, cfg, model, tok, _target_tasks(args, args.pool))
    for name, bank in banks.items():
        path = os.path.join(out_dir, "banks", f"{name}.safetensors")
        bank.save(path)
        _log(f"wrote {path}")
    return 0


def cmd_score(args) -> int:
    from trim_fast import outputs
    from trim_fast.data import tokenizer_fingerprint
    from trim_fast.fingerprints import FingerprintBank
    from trim_fast.pipeline import BANK_FIELDS

    ctx = _init(args)
    try:
        out_dir = outputs.ensure_out_dir(args.out)
        model, tok = _load(args)
        from trim_fast.models.loading import model_id

        # a bank from another model (or adapter) that shares the tokenizer is refused too
        expect = {"tokenizer_hash": tokenizer_fingerprint(tok), "model_id": model_id(args.model),
                  "adapter": args.adapter}
        banks = {name: FingerprintBank.load(path, expect=expect)
                 for name, path in zip(_task_names(args.bank), args.bank)}
        first = next(iter(banks.values())).meta
        if first.get("scope") not in (None, args.scope):
            _log(f"scoring with the banks' scope {first['scope']!r}")
        for k in BANK_FIELDS:
            if k in first and hasattr(args, k):
                setattr(args, k, first[k])
        cfg = _config(args)
        _score_and_write(args, cfg, model, tok, banks, out_dir, ctx, write_coreset=False)
    finally:
        ctx.close()
    return 0


def cmd_pick(args) -> int:
    import pyarrow.parquet as pq
    import torch

    from trim_fast import outputs
    from trim_fast.pipeline import selection_name
    from trim_fast.pool import iter_pool_chunks, read_selected
    from trim_fast.selection import combine_tasks, num_selected, select_top_k

    out_dir = outputs.ensure_out_dir(args.out)
    try:
        table = pq.read_table(args.scores)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
        raise DataError(f"{args.scores}: not a readable score table ({exc})") from exc
    position = {}
    for _, start, chunk in iter_pool_chunks(args.pool, 4096):
        position.update((e.id, start + i) for i, e in enumerate(chunk))
    if "id" not in table.column_names or "score" not in table.column_names:
        raise DataError(f"{args.scores}: not a trim-fast score table (needs 'id' and 'score' columns)")
    ids = table.column("id").to_pylist()
    missing = [i for i in ids if i not in position]
    if missing or len(ids) != len(position):
        raise DataError(f"{args.scores}: the score table does not match the pool files "
                        f"({len(ids)} rows vs {len(position)} examples; {len(missing)} unknown ids, "
                        f"e.g. {missing[:3]})")
    cols = sorted(c for c in table.column_names if c.startswith("score[")) or ["score"]
    row_of = torch.tensor([position[i] for i in ids])
    per_task = torch.full((len(cols), len(ids)), float("nan"))
    for t, c in enumerate(cols):
        values = [float("nan") if v is None else float(v) for v in table.column(c).to_pylist()]
        per_task[t, row_of] = torch.tensor(values, dtype=torch.float32)
    combined = combine_tasks(per_task, args.combine)
    k = num_selected(len(ids), fraction=args.fraction, k=args.k)
    chosen = select_top_k(combined, k).tolist()
    name = selection_name(args.fraction, args.k)
    outputs.write_coreset(read_selected(args.pool, chosen), os.path.join(out_dir, name))
    _log(f"selected {len(chosen)} of {len(ids)} -> {os.path.join(out_dir, name)}")
    return 0


def cmd_demo(args) -> int:
    from trim_fast import outputs
    from trim_fast.demo.generate import generate

    out_dir = outputs.ensure_out_dir(args.out)
    manifest = generate(os.path.join(out_dir, "data"), pool_size=args.pool_size,
                        targets_per_family=args.targets_per_family, seed=args.seed)
    argv = ["select", "--out", out_dir, "--seed", str(args.seed)]
    argv += sum((["--pool", p] for p in manifest["pool"]), [])
    argv += sum((["--targets", p] for p in manifest["targets"].values()), [])
    if args.device:
        argv += ["--device", args.device]
    if args.model:
        argv += ["--model", args.model]
    if args.no_progress:
        argv.append("--no-progress")
    summary = _demo_select(build_parser().parse_args(argv), manifest, out_dir)
    _print_precision("no warmup", summary)
    if args.warmup:
        warm_dir = os.path.join(out_dir, "warmup")
        ns = build_parser().parse_args([*argv[:1], "--out", warm_dir, *argv[3:], "--warmup",
                                        *args.warmup_args.split()])
        warm_summary = _demo_select(ns, manifest, outputs.ensure_out_dir(warm_dir))
        _print_precision("after LoRA warmup", warm_summary)
        summary["warmup_comparison"] = {
            task: {"no_warmup": p["precision"],
                   "warmup": warm_summary["precision_per_task"][task]["precision"]}
            for task, p in summary.get("precision_per_task", {}).items()}
        summary["warmup_run"] = {"out": warm_dir, **warm_summary.get("warmup", {})}
        outputs.write_json(summary, os.path.join(out_dir, "summary.json"))
    print(f"outputs in {out_dir}")
    return 0


def _demo_select(ns, manifest, out_dir) -> dict:
    ctx = _init(ns)
    cfg = _config(ns)
    warm = None
    if ns.warmup:
        from trim_fast.data import load_examples

        warm = maybe_warmup_for_select(ns, load_examples(ns.pool), out_dir)
    model, tok = _load(ns)
    tasks = _target_tasks(ns, ns.pool)
    banks = _build_banks(ns, cfg, model, tok, tasks)
    try:
        return _score_and_write(ns, cfg, model, tok, banks, out_dir, ctx, warmup=warm,
                                task_families=_task_families(tasks),
                                extra_summary={"demo": {"family_counts": manifest["family_counts"]}})
    finally:
        ctx.close()


def _print_precision(title: str, summary: dict) -> None:
    print(f"\n{title}:\n{'task':<20} {'precision@5%':>12} {'family share':>13}")
    for task, p in summary.get("precision_per_task", {}).items():
        print(f"{task:<20} {p['precision']:>12.3f} {p['family_share_of_pool']:>13.3f}")


def cmd_eval(args) -> int:
    from trim_fast import outputs
    from trim_fast.data import load_examples
    from trim_fast.demo.generate import generate, heldout_examples
    from trim_fast.evaluation.quality import run_downstream, run_quality, save_result
    from trim_fast.pipeline import SelectionConfig

    out_dir = outputs.ensure_out_dir(args.out)
    if bool(args.pool) != bool(args.targets):
        raise ValueError("give both --pool and --targets, or neither (the demo data is used)")
    demo = not args.pool
    if demo:
        manifest = generate(os.path.join(out_dir, "data"), pool_size=args.pool_size,
                            targets_per_family=args.targets_per_family, seed=args.seed)
        args.pool, args.targets = manifest["pool"], list(manifest["targets"].values())
    pool = load_examples(args.pool)
    if not any(e.meta.get("family") for e in pool):
        raise DataError("eval needs a labelled pool: records with a 'family' field")
    targets = dict(zip(_task_names(args.targets), (load_examples([p]) for p in args.targets)))
    ns = argparse.Namespace(model=args.model, adapter=None, device=args.device, dtype=args.dtype)
    model, tok = _load(ns)
    cfg = SelectionConfig(max_tokens=args.max_tokens, seed=args.seed)
    result = run_quality(model, tok, pool, targets, cfg, ablations=not args.no_ablations)
    downstream = None
    if args.downstream != "none":
        task = next((t for t, f in result["families"].items() if f["family"] == args.downstream), None)
        if task is None:
            raise ValueError(f"--downstream {args.downstream!r}: no target file of that family")
        if args.heldout:
            heldout = load_examples([args.heldout])
        elif demo:
            heldout = heldout_examples(args.downstream, args.heldout_size, seed=args.seed + 7_777,
                                       exclude=pool)
        else:
            raise ValueError("--downstream needs --heldout FILE with new examples of that family")
        downstream = run_downstream(args.model, tok, pool, result["families"][task]["trim_top5"],
                                    heldout, args.downstream, out_dir, seed=args.seed,
                                    warmup_overrides={"epochs": args.downstream_epochs,
                                                      "lr": args.downstream_lr, "r": args.downstream_r,
                                                      "alpha": 2 * args.downstream_r,
                                                      "effective_batch": 8})
    save_result(result, out_dir, downstream)
    with open(os.path.join(out_dir, "quality.md")) as f:
        print(f.read())
    return 0


COMMANDS = {"eval": cmd_eval, "select": cmd_select, "warmup": cmd_warmup, "fingerprint": cmd_fingerprint, "score": cmd_score,
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
