"""``trim-fast``: select the few percent of an instruction pool that matter for a target task.

Subcommands: ``select`` (the whole job), ``fingerprint`` / ``score`` / ``pick`` (its stages),
``warmup`` (a LoRA warmup adapter), ``demo`` (the whole job on bundled demo data) and ``eval``
(selection quality against baselines). Each parses its flags into the config dataclasses of
:mod:`trim_fast.config` (whose fields generate the flags and their help), calls the runs of
:mod:`trim_fast.run.pipeline` and maps their errors to exit codes. ``--config FILE`` (YAML or
JSON) sets any flag; flags given on the command line win.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from trim_fast.config import ModelConfig, SelectionConfig, WarmupConfig, stage_fields
from trim_fast.errors import ConfigError, TrimError
from trim_fast.extras import require_extra
from trim_fast.flags import (IO, SOURCES, WARMUP_PREFIXED, add_settings, build_settings,
                             read_config_file)

logger = logging.getLogger("trim_fast")


# ---------------------------------------------------------------------------------------------
# the parser
# ---------------------------------------------------------------------------------------------

def _command(sub, name: str, help: str, groups: list) -> None:
    """A subcommand with its flags (``(title, [Flag])`` groups, or a config class with the
    arguments of :func:`add_settings`) and ``--config FILE`` over all of them."""
    p = sub.add_parser(name, help=help)
    flags = []
    for title, what in groups:
        if isinstance(what, list):
            group = p.add_argument_group(title)
            for flag in what:
                flag.add_to(group)
            flags += what
        else:
            flags += add_settings(p, what, **title)
    p.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                   help="YAML or JSON file setting any of these flags (by their names, e.g. "
                        "'layers: 4', 'pool: [a.jsonl]'); command-line flags win")
    p.set_defaults(flags=tuple(flags))


def _io(*names: str) -> list:
    return [IO[n] for n in names]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="trim-fast", description=__doc__.split("\n\n")[0].replace("``", ""))
    ap.add_argument("-q", "--quiet", action="count", default=0, help="only warnings and errors")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="debug messages")
    sub = ap.add_subparsers(dest="command", required=True)
    run = ("inputs and outputs", _io("pool", "targets", *SOURCES, "out", "no_progress"))
    coreset = ("coreset", _io("output_format", "layout"))
    _command(sub, "select", "fingerprint the targets, score the pool, write the coreset", [
        run, coreset, ("run", _io("dry_run")), ({}, ModelConfig), ({}, SelectionConfig),
        ("warmup (docs/SPEC.md section 5)", _io("warmup", "warmup_out")),
        (dict(prefix="warmup-", prefixed=WARMUP_PREFIXED), WarmupConfig)])
    _command(sub, "fingerprint", "targets -> bank files (OUT/banks/<task>.safetensors)", [
        run, ({}, ModelConfig),
        (dict(only=stage_fields("fingerprint")), SelectionConfig)])  # --pool: targets, center
    pool_run = ("inputs and outputs", _io("pool", *SOURCES, "out", "no_progress"))
    _command(sub, "score", "bank files + pool -> score table (the banks' settings apply)", [
        pool_run, ("banks", _io("bank")), ({}, ModelConfig),
        (dict(only=stage_fields("score")), SelectionConfig)])
    _command(sub, "pick", "score table + pool -> coreset", [
        pool_run, coreset, ("scores", _io("scores")),
        (dict(only=stage_fields("pick")), SelectionConfig)])
    _command(sub, "warmup", "train a LoRA warmup adapter on a seeded pool subset", [
        pool_run, (dict(only=("model", "device")), ModelConfig), ({}, WarmupConfig)])

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
    """Flags given, over the values of ``--config FILE`` (checked against the command's flags)."""
    given = {k: v for k, v in vars(args).items()
             if k not in ("command", "quiet", "verbose", "flags")}
    path = given.pop("config", None)
    if path is None:
        return given
    return {**read_config_file(path, args.flags, args.command), **given}


def _progress(values: dict) -> bool:
    return not values.get("no_progress", False) and logger.getEffectiveLevel() <= logging.INFO


def _require(values: dict, *names: str) -> None:
    missing = [n for n in names if not values.get(n)]
    if missing:
        raise ConfigError(f"missing {', '.join('--' + n.replace('_', '-') for n in missing)}")


def _inputs(values: dict, *, pool: bool = True, targets: bool = False, out: str | None = None):
    from trim_fast.run.inputs import open_inputs

    return open_inputs(values.get("pool") if pool else None,
                       values.get("targets") if targets else None,
                       **{k: values.get(k) for k in SOURCES}, layout=values.get("layout", "trim"),
                       out=out)


def _output(values: dict):
    from trim_fast.run.pipeline import Output

    return Output(values.get("out"), values.get("layout", "trim"),
                  values.get("output_format", "auto"))


def _warmup_settings(values: dict) -> WarmupConfig | None:
    """select --warmup's settings (its flags prefixed where they clash with select's)."""
    if not values.get("warmup"):
        return None
    if values.get("adapter"):
        raise ConfigError("--warmup and --adapter together: --warmup trains its own adapter; pass one")
    return build_settings(WarmupConfig, values, prefix="warmup_", prefixed=WARMUP_PREFIXED)


def _select(values: dict):
    """``select``: the run's result (None for a dry run, which prints its estimate)."""
    from trim_fast.run import pipeline
    from trim_fast.run.inputs import check_coreset_format

    dry = values.get("dry_run", False)
    _require(values, "pool", *(() if dry else ("out",)))
    cfg, mc = build_settings(SelectionConfig, values), build_settings(ModelConfig, values)
    warmup = _warmup_settings(values)
    pipeline.check_before_loading(mc.device, cfg)
    inputs = _inputs(values, targets=True, out=values.get("out"))
    check_coreset_format(inputs.pool, values.get("output_format", "auto"))
    if dry:
        print(json.dumps(pipeline.estimate(inputs, cfg, mc, progress=_progress(values)), indent=2))
        return None
    return pipeline.run_select(inputs, cfg, mc, _output(values), warmup=warmup,
                               warmup_out=values.get("warmup_out"), progress=_progress(values))


def cmd_select(values: dict) -> int:
    _select(values)
    return 0


def cmd_fingerprint(values: dict) -> int:
    from trim_fast.run import pipeline

    _require(values, "out")
    cfg, mc = build_settings(SelectionConfig, values), build_settings(ModelConfig, values)
    pipeline.check_before_loading(mc.device, cfg)
    pipeline.run_fingerprint(_inputs(values, targets=True), cfg, mc, values["out"],
                             progress=_progress(values))
    return 0


def cmd_score(values: dict) -> int:
    from trim_fast.bank.checks import collect_banks
    from trim_fast.run import pipeline

    _require(values, "bank", "pool", "out")
    banks = collect_banks(values["bank"])  # refused before the model loads
    # the banks' own settings apply; an explicit flag that contradicts them is refused
    cfg = build_settings(SelectionConfig, {**values, **pipeline.bank_settings(banks, values)})
    mc = build_settings(ModelConfig, values)
    pipeline.check_before_loading(mc.device, cfg)
    pipeline.run_score(_inputs(values, out=values["out"]), banks, cfg, mc, values["out"],
                       progress=_progress(values))
    return 0


def cmd_pick(values: dict) -> int:
    from trim_fast.data import open_records
    from trim_fast.run import pipeline

    _require(values, "scores", "pool", "out")
    cfg = build_settings(SelectionConfig, values)
    pool = open_records(values["pool"], **{k: values.get(k) for k in SOURCES})
    pipeline.run_pick(pool, values["scores"], cfg, _output(values))
    return 0


def cmd_warmup(values: dict) -> int:
    from trim_fast.models.loading import load_tokenizer
    from trim_fast.run import pipeline
    from trim_fast.warmup import run_warmup

    _require(values, "pool", "out")
    wcfg = build_settings(WarmupConfig, values)
    pipeline.check_before_loading(values.get("device"))
    pool = _inputs(values).pool
    name = values.get("model")
    result = run_warmup(name, pool, load_tokenizer(name), wcfg, values["out"],
                        device=values.get("device"), progress=_progress(values))
    logger.info("warmup: %d examples, %d steps, loss %.4f -> %.4f in %.1fs", len(result.subset_ids),
                len(result.losses), result.losses[0], result.losses[-1], result.seconds)
    print(values["out"])
    return 0


def cmd_demo(values: dict) -> int:
    from trim_fast.demo.common import print_precision
    from trim_fast.demo.generate import generate
    from trim_fast.run import outputs

    out_dir = outputs.ensure_out_dir(values["out"])
    manifest = generate(os.path.join(out_dir, "data"), pool_size=values["pool_size"],
                        targets_per_family=values["targets_per_family"], seed=values["seed"])
    run = {k: v for k, v in values.items() if k in ("model", "device", "no_progress", "seed")}
    run.update(pool=manifest["pool"], targets=list(manifest["targets"].values()), out=out_dir)
    summary = _select(run).summary
    print_precision("no warmup", summary)
    if values.get("warmup"):
        warm_dir = outputs.ensure_out_dir(os.path.join(out_dir, "warmup"))
        warm_run = dict(run, out=warm_dir, warmup=True)
        for f in dataclasses.fields(WarmupConfig):
            if f.name in values:
                key = f"warmup_{f.name}" if f.name in WARMUP_PREFIXED else f.name
                warm_run[key] = values[f.name]
        warm_summary = _select(warm_run).summary
        print_precision("after LoRA warmup", warm_summary)
        summary["warmup_comparison"] = {
            task: {"no_warmup": p["precision"],
                   "warmup": warm_summary["precision_per_task"][task]["precision"]}
            for task, p in summary.get("precision_per_task", {}).items()}
        summary["warmup_run"] = {"out": warm_dir, **warm_summary.get("warmup", {})}
    summary["demo"] = {"family_counts": manifest["family_counts"]}
    outputs.write_json(summary, os.path.join(out_dir, "summary.json"))
    print(f"outputs in {out_dir}")
    return 0


def _later(module: str, name: str):
    """A command of a face imported only when it runs (eval, bench)."""
    def run(values: dict) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(values)

    return run


COMMANDS = {"select": cmd_select, "fingerprint": cmd_fingerprint, "score": cmd_score,
            "pick": cmd_pick, "warmup": cmd_warmup, "demo": cmd_demo,
            "eval": _later("trim_fast.evaluation.cli", "cmd_eval"),
            "bench": _later("trim_fast.benchmark", "cmd_bench")}


def setup_logging(quiet: int, verbose: int) -> None:
    """The CLI's messages: INFO by default, WARNING with -q, DEBUG with -v, on stderr."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    if not any(getattr(h, "_trim_fast_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[trim-fast] %(message)s"))
        handler._trim_fast_cli = True
        logger.addHandler(handler)
    logger.setLevel(level)


# Commands that run on torch alone (a GPU image has no bm25s); bench's plot needs matplotlib
# only when it is drawn.
LEAN_COMMANDS = ("bench",)


def main(argv=None) -> int:
    """Exit status 0; 2 with one line on stderr for a :class:`~trim_fast.errors.TrimError` (a
    mistake in the inputs) or an ``OSError`` (disk full, permissions: the message names the
    path); 130 on Ctrl-C; anything else is a bug or out of memory: its traceback, status 1."""
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet, args.verbose)
    try:
        if args.command not in LEAN_COMMANDS:
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
