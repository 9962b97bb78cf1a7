"""``trim-fast``: select the few percent of an instruction pool that matter for a target task.

Subcommands: ``select`` (the whole job), ``fingerprint`` / ``score`` / ``pick`` (its stages),
``warmup`` (a LoRA warmup adapter), ``demo`` (the whole job on bundled demo data) and ``eval``
(selection quality against baselines). Each parses its flags into the config dataclasses of
:mod:`trim_fast.config` (whose fields generate the flags and their help), calls the library
(:class:`trim_fast.Selector`) and writes the outputs. ``--config FILE`` (YAML or JSON) sets any
flag; flags given on the command line win.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time

from trim_fast.config import ModelConfig, SelectionConfig, WarmupConfig, as_dict, stage_fields
from trim_fast.errors import BankMismatchError, ConfigError, DataError, TrimError
from trim_fast.extras import require_extra
from trim_fast.flags import add_settings, build_settings

logger = logging.getLogger("trim_fast")

# Flags that exist on select but mean something else there are prefixed for the warmup.
_WARMUP_PREFIXED = ("fraction", "seed", "lr", "epochs", "warmup_ratio", "effective_batch",
                    "micro_batch", "weight_decay", "max_length", "dtype", "gradient_checkpointing")


# ---------------------------------------------------------------------------------------------
# the parser
# ---------------------------------------------------------------------------------------------


def _run_args(p, *, pool: str | None = "required", targets: bool = False, out: bool = True) -> None:
    g = p.add_argument_group("inputs and outputs")
    if pool:
        g.add_argument("--pool", action="append", default=argparse.SUPPRESS, metavar="SOURCE",
                       help="candidate pool (repeatable): JSONL, JSON, Parquet, .jsonl.gz/.zst, a "
                            "glob of shards, a save_to_disk folder or a hub dataset id")
    if targets:
        g.add_argument("--targets", action="append", default=argparse.SUPPRESS, metavar="SOURCE",
                       help="target examples, one task per source (repeatable); none: in-domain "
                            "mode (a seeded sample of the pool)")
    if pool or targets:
        g.add_argument("--format", default=argparse.SUPPRESS,
                       help="record shape of every source, when detection is ambiguous")
        g.add_argument("--split", default=argparse.SUPPRESS, help="split of a hub dataset or "
                       "DatasetDict folder")
        g.add_argument("--subset", default=argparse.SUPPRESS, help="subset (config name) of a hub "
                       "dataset")
    if out:
        g.add_argument("--out", default=argparse.SUPPRESS, help="output directory")
    g.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                   help="YAML or JSON file setting any of these flags (by their names, e.g. "
                        "'layers: 4', 'pool: [a.jsonl]'); command-line flags win")
    g.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bars")


def _output_args(p) -> None:
    g = p.add_argument_group("coreset")
    g.add_argument("--output-format", choices=("auto", "jsonl", "parquet", "hf"),
                   default=argparse.SUPPRESS,
                   help="coreset file: auto (Parquet for Parquet pools, else JSONL), jsonl, "
                        "parquet, or hf (a datasets save_to_disk folder)")
    g.add_argument("--layout", choices=("trim", "less"), default=argparse.SUPPRESS,
                   help="less: k = int(fraction * |pool|) as LESS rounds it; select also writes "
                        "OUT/<task>/sorted.csv and OUT/<task>/top_p*.jsonl as LESS writes them "
                        "(file name, index, score)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="trim-fast", description=__doc__.split("\n\n")[0].replace("``", ""))
    ap.add_argument("-q", "--quiet", action="count", default=0, help="only warnings and errors")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="debug messages")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("select", help="fingerprint the targets, score the pool, write the coreset")
    _run_args(p, targets=True)
    _output_args(p)
    p.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                   help="count examples and tokens, time a short forward, estimate the run; "
                        "write nothing")
    add_settings(p, ModelConfig)
    add_settings(p, SelectionConfig)
    g = p.add_argument_group("warmup (docs/SPEC.md section 5)")
    g.add_argument("--warmup", action="store_true", default=argparse.SUPPRESS,
                   help="train a LoRA warmup adapter on a pool subset first; score with it merged")
    g.add_argument("--warmup-out", default=argparse.SUPPRESS,
                   help="adapter directory (default: OUT/warmup_adapter)")
    add_settings(p, WarmupConfig, prefix="warmup-", prefixed=_WARMUP_PREFIXED)

    p = sub.add_parser("fingerprint", help="targets -> bank files (OUT/banks/<task>.safetensors)")
    _run_args(p, pool="optional", targets=True)
    add_settings(p, ModelConfig)
    add_settings(p, SelectionConfig, only=stage_fields("fingerprint"))  # --pool: targets, center

    p = sub.add_parser("score", help="bank files + pool -> score table (the banks' settings apply)")
    _run_args(p)
    p.add_argument("--bank", action="append", default=argparse.SUPPRESS, metavar="FILE",
                   help="bank file (repeatable)")
    add_settings(p, ModelConfig)
    add_settings(p, SelectionConfig, only=stage_fields("score"))

    p = sub.add_parser("pick", help="score table + pool -> coreset")
    _run_args(p)
    _output_args(p)
    p.add_argument("--scores", default=argparse.SUPPRESS,
                   help="scores.parquet written by 'score' or 'select'")
    add_settings(p, SelectionConfig, only=stage_fields("pick"))

    p = sub.add_parser("warmup", help="train a LoRA warmup adapter on a seeded pool subset")
    _run_args(p)
    add_settings(p, ModelConfig, only=("model", "device"))
    add_settings(p, WarmupConfig)

    p = sub.add_parser("demo", help="the whole job on the embedded SmolLM2 and bundled demo data")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--pool-size", type=int, default=1000)
    p.add_argument("--targets-per-family", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--warmup", action="store_true",
                   help="then LoRA-warm the model on 5%% of the pool, select again, and record "
                        "both runs' precision per family in summary.json")
    add_settings(p, ModelConfig, only=("model", "device"))
    add_settings(p, WarmupConfig, exclude=("fraction", "seed", "max_length", "dtype"))

    from trim_fast.evaluation.cli import add_eval_parser

    add_eval_parser(sub)
    from trim_fast.benchmark import add_bench_parser

    add_bench_parser(sub)
    return ap


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


def _values(args) -> dict:
    """Flags given, over the values of ``--config FILE``."""
    given = {k: v for k, v in vars(args).items() if k not in ("command", "quiet", "verbose")}
    path = given.pop("config", None)
    if path is None:
        return given
    return {**read_config_file(path, args.command), **given}


def read_config_file(path: str, command: str) -> dict:
    """Flag values from a YAML or JSON mapping; keys are flag names (``lora-r`` or ``lora_r``)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    try:
        if path.lower().endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - json and yaml raise their own types
        raise ConfigError(f"--config {path}: not valid {'JSON' if path.endswith('.json') else 'YAML'} "
                        f"({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of flag names to values")
    actions = _actions(command)
    out = {}
    for key, value in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        action = actions.get(name)
        if action is None:
            raise ConfigError(f"--config {path}: unknown setting {key!r} for '{command}'; known: "
                            f"{', '.join(sorted(actions))}")
        out[action.dest] = _config_value(action, value, f"--config {path}: {key}")
    return out


def _actions(command: str) -> dict:
    """Setting names a config file may use for ``command`` (dests and flag names) -> the flag."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for action in sub.choices[command]._actions:
        if action.dest in ("help", "config"):
            continue
        out[action.dest] = action
        for opt in action.option_strings:
            out[opt.lstrip("-").replace("-", "_")] = action
    return out


def _config_value(action, value, where: str):
    """A config file's value as the flag would have parsed it: typed, and within its choices."""
    if isinstance(action, argparse._AppendAction):
        values = value if isinstance(value, list) else [value]
        return [_config_value(argparse.Action([], "x", type=action.type), v, where) for v in values]
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if value is None or isinstance(value, (list, dict)):
        raise ConfigError(f"{where}: expected one value, got {value!r}")
    if action.type is int and isinstance(value, float):  # int(2.7) would be 2: refused like the flag
        raise ConfigError(f"{where}: {value!r} is not a valid int")
    try:
        value = (action.type or str)(value if not isinstance(value, bool) else str(value).lower())
    except (TypeError, ValueError):
        kind = getattr(action.type, "__name__", "value")
        raise ConfigError(f"{where}: {value!r} is not a valid {kind}") from None
    if action.choices and value not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def _progress(values: dict) -> bool:
    return not values.get("no_progress", False) and logger.getEffectiveLevel() <= logging.INFO


def _require(values: dict, *names: str) -> None:
    missing = [n for n in names if not values.get(n)]
    if missing:
        raise ConfigError(f"missing {', '.join('--' + n.replace('_', '-') for n in missing)}")


def _check_before_loading(values: dict, cfg: SelectionConfig | None = None) -> None:
    """A device this torch or machine has not, and settings that would fail only after the
    model ran, are refused before any input is read."""
    from trim_fast.api import check_settings
    from trim_fast.models.loading import check_device

    check_device(values.get("device"))
    if cfg is not None:
        check_settings(cfg.resolved())


def _open(values: dict, key: str):
    from trim_fast.data import open_records

    return open_records(values[key], split=values.get("split"), subset=values.get("subset"),
                        format=values.get("format"))


def _target_tasks(values: dict) -> dict | None:
    """``{task: records}``, one task per --targets source, named after it; None: in-domain."""
    from trim_fast.data import open_tasks

    sources = values.get("targets") or []
    if not sources:
        return None
    tasks = open_tasks(list(sources), split=values.get("split"), subset=values.get("subset"),
                       format=values.get("format"))
    if values.get("layout") == "less":  # LESS writes OUT/<task>/: not over the run's own folders
        taken = sorted(set(RUN_FOLDERS) & set(tasks))
        if taken:
            raise ConfigError(f"--layout less writes OUT/<task>/, and task name(s) {taken} are "
                             "folders of the run itself; rename the target file(s)")
    return tasks


RUN_FOLDERS = ("work", "banks", "warmup_adapter", "warmup", "data")


def _check_inputs(pool, tasks) -> bytes:
    """Read every input record once before any model is loaded: bad data fails in seconds.
    Returns the pool's content digests (16 bytes a record, pool order; see
    :meth:`~trim_fast.data.formats.Example.digest`), which the end of the run checks again."""
    digests = bytearray()
    for ex in pool if pool is not None else ():
        digests += ex.digest()
    for name, recs in (tasks or {}).items():
        if recs.count() == 0:
            raise DataError(f"targets {name!r}: no records")
    return bytes(digests)


def _refuse_glob_into_out(pool, out: str) -> None:
    """A --pool glob that matches files inside --out would read a run's own outputs (an earlier
    coreset) as pool records."""
    out_real = os.path.realpath(out)
    for d in pool.describe():
        path = d.get("path")
        if d.get("glob") and path and os.path.realpath(path).startswith(out_real + os.sep):
            raise ConfigError(f"--pool {d['glob']}: matches {path}, inside --out {out}; narrow the "
                              "glob or write the outputs elsewhere")


class _Checked:
    """Pool examples read at the end of a run, each checked against the digest it was scored
    with; ``take`` as :meth:`Records.take` for the writers."""

    def __init__(self, examples: dict):
        self.examples = examples

    def take(self, indices):
        return [self.examples[int(i)] for i in indices]


def _recheck_pool(pool, digests: bytes, wanted) -> _Checked:
    """Read the pool again at the end of a run: every record must still be the one scored (the
    digests of :func:`_check_inputs`), else the run is refused before anything is written (a
    pool edited while the run scored would give new text old scores). The examples at the
    positions ``wanted`` are kept for the outputs: what is written is what was checked."""
    wanted, kept, n = set(int(i) for i in wanted), {}, 0
    for n, ex in enumerate(pool, start=1):
        i = n - 1
        if 16 * n > len(digests) or ex.digest() != digests[16 * i:16 * n]:
            raise DataError(f"{ex.source}:{ex.line}: the pool changed while the run was scoring "
                            f"(record {i}, id {ex.id!r}, is not the record that was scored); "
                            "nothing was written: run the command again (unchanged chunks are "
                            "reused)")
        if i in wanted:
            kept[i] = ex
    if 16 * n != len(digests):
        raise DataError(f"the pool changed while the run was scoring: it holds {n} records, "
                        f"{len(digests) // 16} were scored; nothing was written: run the command again")
    return _Checked(kept)


def _check_coreset_format(values: dict, pool) -> None:
    """A JSONL coreset cannot carry bytes unchanged (strict JSON has no bytes): when the coreset
    will be JSONL, refuse a Parquet pool with a binary column now, before any model is loaded,
    rather than after scoring. (Other sources are checked record by record when written.)"""
    from trim_fast.run import outputs

    sources = pool.describe()
    fmt = outputs.resolve_output_format(values.get("output_format", "auto"),
                                        [str(d.get("path") or d.get("name") or "") for d in sources])
    if fmt != "jsonl":
        return
    import pyarrow.parquet as pq

    for d in sources:
        if d.get("kind") != "parquet":
            continue
        for column in pq.read_schema(d["path"]):
            if _holds_binary(column.type):
                raise DataError(f"{d['path']}: column {column.name!r} holds binary data, which a "
                                "JSONL coreset cannot carry unchanged; write the coreset with "
                                "--output-format parquet (or hf), or leave --output-format at auto")


def _holds_binary(t) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) \
            or getattr(pa.types, "is_binary_view", lambda _: False)(t):
        return True
    if pa.types.is_struct(t):
        return any(_holds_binary(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _holds_binary(t.key_type) or _holds_binary(t.item_type)
    if hasattr(t, "value_type"):  # list, large list, fixed-size list, dictionary
        return _holds_binary(t.value_type)
    return False


def _selector(values: dict, cfg: SelectionConfig, *, adapter: str | None = None):
    from trim_fast.api import Selector

    mc = build_settings(ModelConfig, values)
    t0 = time.perf_counter()
    sel = Selector(mc.model, config=cfg, adapter=adapter or mc.adapter, device=mc.device,
                   dtype=mc.dtype, progress=_progress(values))
    logger.info("model %s loaded in %.1fs on %s", sel.model_name, time.perf_counter() - t0,
                next(sel.model.parameters()).device)
    return sel


def _write_selection(values: dict, cfg, sel, scores, choice, banks, pool, out_dir, *,
                     seconds: float, digests: bytes, extra: dict | None = None,
                     loss_curves=None) -> dict:
    """Every output of ``select``, written together (:func:`outputs.staged`) from the pool as
    re-checked against ``digests`` at the end of the run."""
    from trim_fast.run import outputs
    from trim_fast.selection import select_top_k

    layout = values.get("layout", "trim")
    wanted = set(choice.indices)
    if layout == "less":
        for t_i in range(len(scores.tasks)):
            wanted.update(select_top_k(scores.score[t_i], choice.k).tolist())
    checked = _recheck_pool(pool, digests, wanted)
    cols = outputs.score_columns(scores, choice.combined, choice.indices, digests)
    fmt = outputs.resolve_output_format(values.get("output_format", "auto"),
                                        sorted(set(scores.sources)))
    name = outputs.coreset_name(cfg.fraction, cfg.k, fmt)
    path = os.path.join(out_dir, name)
    with outputs.staged(out_dir) as stage:
        summary = _write_outputs(values, cfg, sel, scores, choice, banks, checked, stage, cols,
                                 name, fmt, seconds=seconds, extra=extra, loss_curves=loss_curves)
    logger.info("selected %d of %d -> %s", len(choice.indices), len(scores), path)
    _refuse_empty_selection(choice, len(scores), out_dir)
    return summary


def _refuse_empty_selection(choice, size: int, out_dir: str) -> None:
    """Nothing selected is a failed run (exit 2), though its score table is written."""
    if not choice.indices:
        raise DataError(f"nothing selected: none of the {size} pool example(s) has a scored token "
                        f"(every score is -inf); see {os.path.join(out_dir, 'scores.parquet')} "
                        "(n_counted, n_scored) and check --scope and the targets")


def _write_outputs(values: dict, cfg, sel, scores, choice, banks, pool, out_dir, cols, name,
                   fmt, *, seconds: float, extra: dict | None, loss_curves) -> dict:
    from trim_fast.run import outputs

    layout = values.get("layout", "trim")
    outputs.write_table(cols, out_dir)
    outputs.write_coreset(pool.take(choice.indices), os.path.join(out_dir, name), fmt)
    if layout == "less":  # one folder per task, as LESS writes them
        for t_i, task in enumerate(scores.tasks):
            outputs.write_less_task(os.path.join(out_dir, task), scores, t_i, choice.k, pool,
                                    outputs.coreset_name(cfg.fraction, cfg.k, "jsonl", layout="less"))
    summary = outputs.summary(sel.config, scores, choice, banks, seconds=seconds)
    summary["model"] = {"name": sel.model_name}
    summary["resolved"] = {"model": as_dict(build_settings(ModelConfig, values)),
                           "selection": as_dict(sel.config), "layout": layout, "output_format": fmt}
    summary["outputs"] = {"coreset": name, "table": ["scores.parquet", "sorted.csv"],
                          "report": "report.png"}
    summary.update(extra or {})
    outputs.write_json(summary, os.path.join(out_dir, "summary.json"))
    outputs.write_report(cols, os.path.join(out_dir, "report.png"), loss_curves=loss_curves)
    return summary


def cmd_select(values: dict) -> int:
    from trim_fast.run import outputs
    from trim_fast.run.distributed import init_distributed

    _require(values, "pool", "out")
    cfg = build_settings(SelectionConfig, values)
    _check_before_loading(values, cfg)
    pool, tasks = _open(values, "pool"), _target_tasks(values)
    _refuse_glob_into_out(pool, values["out"])
    digests = _check_inputs(pool, tasks)
    _check_coreset_format(values, pool)
    if values.get("dry_run"):
        return dry_run(values, cfg, pool, tasks, len(digests) // 16)
    ctx, device = init_distributed(values.get("device"))
    if device is not None:
        values["device"] = device
    try:
        out_dir = outputs.ensure_out_dir(values["out"])
        t0 = time.perf_counter()
        warm = None
        adapter = values.get("adapter")
        if values.get("warmup"):
            warm = ctx.on_main(lambda: _warmup_for_select(values, pool, out_dir))
            adapter = warm.adapter_dir
        sel = _selector(values, cfg, adapter=adapter)
        banks = sel.fingerprint(tasks if tasks is not None else
                                {"in_domain": sel.in_domain_targets(pool)}, pool=pool)
        scores = sel.score(pool, banks, work_dir=out_dir)
        choice = sel.choose(scores, rounding="less" if values.get("layout") == "less" else "half_up")
        if ctx.is_main:
            extra = {}
            if warm is not None:
                extra["warmup"] = {"adapter": warm.adapter_dir, "subset_size": len(warm.subset_ids),
                                   "seconds": round(warm.seconds, 3), "final_loss": warm.losses[-1]}
            summary = _write_selection(values, cfg, sel, scores, choice, banks, pool, out_dir,
                                       seconds=time.perf_counter() - t0, digests=digests,
                                       extra=extra,
                                       loss_curves={"warmup": warm.losses} if warm else None)
            values["_summary"] = summary
    finally:
        ctx.close()
    return 0


def _warmup_for_select(values: dict, pool, out_dir: str):
    from trim_fast.models.loading import load_tokenizer, model_id
    from trim_fast.warmup import reusable_adapter, run_warmup

    if values.get("adapter"):
        raise ConfigError("--warmup and --adapter together: --warmup trains its own adapter; pass one")
    wcfg = build_settings(WarmupConfig, values, prefix="warmup_", prefixed=_WARMUP_PREFIXED)
    adapter_dir = values.get("warmup_out") or os.path.join(out_dir, "warmup_adapter")
    name = values.get("model")
    reused = reusable_adapter(adapter_dir, model_id(name), pool, wcfg)  # streams: never the whole pool
    if reused is not None:
        return reused
    logger.info("warmup: %g of the pool, r=%d alpha=%g lr=%g epochs=%d batch=%d", wcfg.fraction,
                wcfg.r, wcfg.alpha, wcfg.lr, wcfg.epochs, wcfg.effective_batch)
    result = run_warmup(name, pool, load_tokenizer(name), wcfg, adapter_dir,
                        device=values.get("device"), progress=_progress(values))
    logger.info("warmup: %d examples, %d steps, loss %.4f -> %.4f in %.1fs -> %s",
                len(result.subset_ids), len(result.losses), result.losses[0], result.losses[-1],
                result.seconds, adapter_dir)
    return result


def dry_run(values: dict, cfg: SelectionConfig, pool, tasks, size: int) -> int:
    """What a run would do: examples, tokens (from a sample), and the forward time estimated
    from a short forward measured here. Loads the model; writes nothing."""
    import itertools

    import torch

    from trim_fast.capture.forward import loop_for
    from trim_fast.models.prepare import forward_model
    from trim_fast.scoring.engine import tokenize_chunk

    sel = _selector(values, cfg)
    sample = list(itertools.islice(iter(pool), 256))
    chunk = tokenize_chunk(sel.tokenizer, sample, cfg)
    per_example = chunk.ids.numel() / max(1, len(chunk))
    with forward_model(sel.model) as base:
        loop = loop_for(base, cfg, pad_id=sel.pad_id)
        device = loop.device
        first = chunk.batches(cfg.max_tokens)[0]
        for _ in loop.hidden_batches(chunk.subset(first)):  # warm the kernels (and the prefix)
            pass
        t0 = time.perf_counter()
        for _ in loop.hidden_batches(chunk.subset(first)):
            pass
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tok_s = sum(chunk.lengths()[i] for i in first) / max(time.perf_counter() - t0, 1e-9)
    est_tokens = per_example * size
    report = {"pool_examples": size, "target_tasks": {n: r.count() for n, r in (tasks or {}).items()}
              or {"in_domain": min(cfg.target_sample, size)},
              "tokens_per_example_sampled": round(per_example, 1), "sampled_examples": len(sample),
              "estimated_pool_tokens": int(est_tokens), "measured_forward_tokens_per_s": round(tok_s, 1),
              "estimated_scoring_seconds": float(f"{est_tokens / max(tok_s, 1e-9):.3g}"),  # tiny models: keep it > 0
              "device": str(device), "chunks": -(-size // cfg.chunk_size)}
    print(json.dumps(report, indent=2))
    return 0


def cmd_fingerprint(values: dict) -> int:
    from trim_fast.api import require_center_pool
    from trim_fast.run import outputs

    _require(values, "out")
    cfg = build_settings(SelectionConfig, values)
    _check_before_loading(values, cfg)
    tasks = _target_tasks(values)
    pool = _open(values, "pool") if values.get("pool") else None
    if tasks is None and pool is None:
        raise DataError("no --targets given and no --pool to sample in-domain targets from")
    _check_inputs(pool, tasks)
    require_center_pool(cfg, pool)  # before the model loads
    out_dir = outputs.ensure_out_dir(values["out"])
    os.makedirs(os.path.join(out_dir, "banks"), exist_ok=True)
    sel = _selector(values, cfg)
    banks = sel.fingerprint(tasks if tasks is not None else {"in_domain": sel.in_domain_targets(pool)},
                            pool=pool)
    for name, bank in banks.items():
        path = os.path.join(out_dir, "banks", f"{name}.safetensors")
        bank.save(path)
        logger.info("wrote %s", path)
    return 0


def cmd_score(values: dict) -> int:
    from trim_fast.api import load_bank
    from trim_fast.bank import settings_conflict
    from trim_fast.config import BANK_FIELDS
    from trim_fast.run import outputs
    from trim_fast.run.distributed import init_distributed

    _require(values, "bank", "pool", "out")
    banks = {}
    for path in values["bank"]:
        bank = load_bank(path)
        name = bank.meta.get("task") or os.path.basename(path).split(".")[0]
        if name in banks:
            raise BankMismatchError(f"{path}: a second bank for task {name!r}")
        banks[name] = bank
    conflict = settings_conflict(banks)  # refused before the model loads
    if conflict:
        raise BankMismatchError(conflict)
    # the banks' own settings apply; an explicit flag that contradicts them is refused
    first = next(iter(banks.values())).meta["settings"]
    from_banks = {k: first[k] for k in BANK_FIELDS if k in first}
    for k, v in from_banks.items():
        if k in values and values[k] != v:
            raise BankMismatchError(f"--{k.replace('_', '-')} {values[k]} contradicts the banks, built "
                             f"with {k}={v!r}; drop the flag or rebuild the banks")
    cfg = build_settings(SelectionConfig, {**values, **from_banks})
    _check_before_loading(values, cfg)
    pool = _open(values, "pool")
    _refuse_glob_into_out(pool, values["out"])
    digests = _check_inputs(pool, None)
    ctx, device = init_distributed(values.get("device"))
    if device is not None:
        values["device"] = device
    try:
        out_dir = outputs.ensure_out_dir(values["out"])
        t0 = time.perf_counter()
        sel = _selector(values, cfg)
        scores = sel.score(pool, banks, work_dir=out_dir)
        choice = sel.choose(scores)
        if ctx.is_main:
            _recheck_pool(pool, digests, ())
            cols = outputs.score_columns(scores, choice.combined, choice.indices, digests)
            summary = outputs.summary(sel.config, scores, choice, banks,
                                      seconds=time.perf_counter() - t0)
            with outputs.staged(out_dir) as stage:
                outputs.write_table(cols, stage)
                outputs.write_json(summary, os.path.join(stage, "summary.json"))
                outputs.write_report(cols, os.path.join(stage, "report.png"))
    finally:
        ctx.close()
    return 0


def _record_key(rid, source, line):
    """A record's identity across spellings of its file's path: its own id, or, for a record
    without one (id ``source:line``), the file's name and the line."""
    return (os.path.basename(str(source)), line) if rid == f"{source}:{line}" else rid


def cmd_pick(values: dict) -> int:
    import pyarrow.parquet as pq
    import torch

    from trim_fast.run import outputs
    from trim_fast.selection import choose

    _require(values, "scores", "pool", "out")
    cfg = build_settings(SelectionConfig, values)
    out_dir = outputs.ensure_out_dir(values["out"])
    try:
        table = pq.read_table(values["scores"])
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
        raise DataError(f"{values['scores']}: not a readable score table ({exc})") from exc
    if not {"index", "id", "score"} <= set(table.column_names):
        raise DataError(f"{values['scores']}: not a trim-fast score table (needs 'index', 'id' and "
                        "'score' columns)")
    pool = _open(values, "pool")
    ids, keys, digests = [], [], bytearray()
    for ex in pool:
        ids.append(ex.id)
        keys.append(_record_key(ex.id, ex.source, ex.line))
        digests += ex.digest()
    _check_coreset_format(values, pool)
    index = table.column("index").to_pylist()
    if sorted(index) != list(range(len(ids))):
        raise DataError(f"{values['scores']}: the score table does not match the pool "
                        f"({table.num_rows} rows, {len(ids)} examples)")
    t_ids = table.column("id").to_pylist()
    theirs = [_record_key(*row) for row in zip(t_ids, table.column("source").to_pylist(),
                                                table.column("line").to_pylist())] \
        if {"source", "line"} <= set(table.column_names) else t_ids
    for row, i in enumerate(index):
        if keys[i] != theirs[row]:
            raise DataError(f"{values['scores']}: the score table does not match the pool: row "
                            f"{row + 1} is example {i} with id {t_ids[row]!r}, the pool's example "
                            f"{i} is {ids[i]!r}")
    _check_scored_content(values["scores"], table, index, digests, pool)
    cols = sorted(c for c in table.column_names if c.startswith("score[")) or ["score"]
    per_task = torch.full((len(cols), len(ids)), float("nan"))
    for t, c in enumerate(cols):
        values_c = [float("nan") if v is None else float(v) for v in table.column(c).to_pylist()]
        per_task[t, torch.tensor(index)] = torch.tensor(values_c, dtype=torch.float32)
    layout = values.get("layout", "trim")
    choice = choose(per_task, combine=cfg.combine, fraction=cfg.fraction, k=cfg.k,
                    rounding="less" if layout == "less" else "half_up")
    fmt = outputs.resolve_output_format(values.get("output_format", "auto"),
                                        sorted(set(table.column("source").to_pylist())))
    path = os.path.join(out_dir, outputs.coreset_name(cfg.fraction, cfg.k, fmt))
    selected = pool.take(choice.indices)
    for i, ex in zip(choice.indices, selected):  # read again: still the records checked above
        if ex.digest() != digests[16 * i:16 * i + 16]:
            raise DataError(f"{ex.source}:{ex.line}: the pool changed while pick ran; nothing "
                            "was written: run it again")
    outputs.write_coreset(selected, path, fmt)
    logger.info("selected %d of %d -> %s", len(choice.indices), len(ids), path)
    _refuse_empty_selection(choice, len(ids), os.path.dirname(values["scores"]) or ".")
    return 0


def _check_scored_content(scores_path: str, table, index: list, digests: bytes, pool) -> None:
    """The pool's records must be the ones scored, by content (the digests resume uses): an
    in-place edit that keeps ids, or lines moved in a pool without ids, is refused naming the
    first row that differs. A table written before the ``digest`` column existed is read with a
    warning."""
    if "digest" not in table.column_names:
        logger.warning("%s has no 'digest' column (written by an older trim-fast): the pool's "
                       "records cannot be checked against what was scored, only their ids",
                       scores_path)
        return
    for row, (i, theirs) in enumerate(zip(index, table.column("digest").to_pylist())):
        if digests[16 * i:16 * i + 16].hex() != theirs:
            ex = pool.take([i])[0]
            raise DataError(f"{scores_path}: row {row + 1} scored pool example {i} "
                            f"({ex.source}:{ex.line}, id {ex.id!r}) with other content than the "
                            "pool holds now: the pool was edited after it was scored. Score it "
                            "again (select or score with the same --out redoes only what changed)")


def cmd_warmup(values: dict) -> int:
    from trim_fast.models.loading import load_tokenizer
    from trim_fast.warmup import run_warmup

    _require(values, "pool", "out")
    wcfg = build_settings(WarmupConfig, values)
    _check_before_loading(values)
    pool = _open(values, "pool")
    _check_inputs(pool, None)
    name = values.get("model")
    result = run_warmup(name, pool, load_tokenizer(name), wcfg, values["out"],
                        device=values.get("device"), progress=_progress(values))
    logger.info("warmup: %d examples, %d steps, loss %.4f -> %.4f in %.1fs", len(result.subset_ids),
                len(result.losses), result.losses[0], result.losses[-1], result.seconds)
    print(values["out"])
    return 0


def cmd_demo(values: dict) -> int:
    from trim_fast.demo.generate import generate
    from trim_fast.run import outputs

    out_dir = outputs.ensure_out_dir(values["out"])
    manifest = generate(os.path.join(out_dir, "data"), pool_size=values["pool_size"],
                        targets_per_family=values["targets_per_family"], seed=values["seed"])
    run = {k: v for k, v in values.items() if k in ("model", "device", "no_progress", "seed")}
    run.update(pool=manifest["pool"], targets=list(manifest["targets"].values()), out=out_dir)
    cmd_select(run)
    summary = run["_summary"]
    _print_precision("no warmup", summary)
    if values.get("warmup"):
        warm_dir = outputs.ensure_out_dir(os.path.join(out_dir, "warmup"))
        warm_run = dict(run, out=warm_dir, warmup=True)
        warm_run.pop("_summary")
        for f in dataclasses.fields(WarmupConfig):
            if f.name in values:
                key = f"warmup_{f.name}" if f.name in _WARMUP_PREFIXED else f.name
                warm_run[key] = values[f.name]
        cmd_select(warm_run)
        warm_summary = warm_run["_summary"]
        _print_precision("after LoRA warmup", warm_summary)
        summary["warmup_comparison"] = {
            task: {"no_warmup": p["precision"],
                   "warmup": warm_summary["precision_per_task"][task]["precision"]}
            for task, p in summary.get("precision_per_task", {}).items()}
        summary["warmup_run"] = {"out": warm_dir, **warm_summary.get("warmup", {})}
    summary["demo"] = {"family_counts": manifest["family_counts"]}
    outputs.write_json(summary, os.path.join(out_dir, "summary.json"))
    print(f"outputs in {out_dir}")
    return 0


def _print_precision(title: str, summary: dict) -> None:
    core = summary.get("coreset", {"per_task": {}})
    print(f"\n{title}:\n{'task':<20} {'precision@5%':>12} {'family share':>13} "
          f"{'in coreset':>10} {'of fair share':>13}")
    for task, p in summary.get("precision_per_task", {}).items():
        c = core["per_task"].get(task, {})
        print(f"{task:<20} {p['precision']:>12.3f} {p['family_share_of_pool']:>13.3f} "
              f"{c.get('count', 0):>10d} {c.get('share_of_fair', 0.0):>13.2f}")
    if "precision" in core:
        print(f"written coreset ({core['selected']} records, tasks combined by "
              f"{summary['config']['combine']}): precision {core['precision']:.3f}")


def _cmd_bench(values: dict) -> int:
    from trim_fast.benchmark import cmd_bench

    return cmd_bench(values)


def _cmd_eval(values: dict) -> int:
    from trim_fast.evaluation.cli import cmd_eval

    return cmd_eval(values)


COMMANDS = {"select": cmd_select, "fingerprint": cmd_fingerprint, "score": cmd_score,
            "pick": cmd_pick, "warmup": cmd_warmup, "demo": cmd_demo, "eval": _cmd_eval,
            "bench": _cmd_bench}


def setup_logging(quiet: int, verbose: int) -> None:
    """The CLI's messages: INFO by default, WARNING with -q, DEBUG with -v, on stderr."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    if not any(getattr(h, "_trim_fast_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[trim-fast] %(message)s"))
        handler._trim_fast_cli = True
        logger.addHandler(handler)
    logger.setLevel(level)


def main(argv=None) -> int:
    """Exit status 0; 2 with one line on stderr for a :class:`~trim_fast.errors.TrimError` (a
    mistake in the inputs) or an ``OSError`` (disk full, permissions: the message names the
    path); 130 on Ctrl-C; anything else is a bug or out of memory: its traceback, status 1."""
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet, args.verbose)
    try:
        require_extra("cli", "the trim-fast command")
        return COMMANDS[args.command](_values(args))
    except KeyboardInterrupt:
        print(f"trim-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    except (TrimError, OSError) as exc:
        print(f"trim-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
