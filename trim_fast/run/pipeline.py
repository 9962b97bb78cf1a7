"""Whole runs under the faces: a selection with every output file, the stages alone (banks, a
score table, a coreset from a score table), the dry run's estimate and the warmup adapter a
selection scores with. The command line parses its flags into the config dataclasses and
:class:`Output`, and calls these; the library's own front door is :class:`trim_fast.Selector`."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass

from trim_fast.config import BANK_FIELDS, ModelConfig, SelectionConfig, WarmupConfig, as_dict
from trim_fast.errors import BankMismatchError, DataError
from trim_fast.run import outputs
from trim_fast.run.inputs import Inputs, recheck_pool

logger = logging.getLogger("trim_fast")


@dataclass
class Output:
    """Where and how a run writes: the directory, the layout (``trim``, or ``less``: LESS's
    rounding of k and its per-task files) and the coreset's file format."""

    out: str
    layout: str = "trim"
    output_format: str = "auto"

    @property
    def rounding(self) -> str:
        return "less" if self.layout == "less" else "half_up"


@dataclass
class RunResult:
    """What a selection run wrote: its directory and its ``summary.json`` (None on the other
    ranks of a torchrun group, which write nothing)."""

    out_dir: str
    summary: dict | None


def check_before_loading(device: str | None, cfg: SelectionConfig | None = None) -> None:
    """A device this torch or machine has not, and settings that would fail only after the
    model ran, are refused before any input is read."""
    from trim_fast.api import check_settings
    from trim_fast.models.loading import check_device

    check_device(device)
    if cfg is not None:
        check_settings(cfg.resolved())


def load_selector(mc: ModelConfig, cfg: SelectionConfig, *, adapter: str | None = None,
                  progress: bool = False):
    from trim_fast.api import Selector

    t0 = time.perf_counter()
    sel = Selector(mc.model, config=cfg, adapter=adapter or mc.adapter, device=mc.device,
                   dtype=mc.dtype, progress=progress)
    logger.info("model %s loaded in %.1fs on %s", sel.model_name, time.perf_counter() - t0,
                next(sel.model.parameters()).device)
    return sel


def _targets(sel, inputs: Inputs) -> dict:
    return inputs.tasks if inputs.tasks is not None else \
        {"in_domain": sel.in_domain_targets(inputs.pool)}


def _distributed(mc: ModelConfig):
    """The torchrun group (a world of one without it) and the model settings of this rank."""
    from trim_fast.run.distributed import init_distributed

    ctx, device = init_distributed(mc.device)
    return ctx, (mc if device is None else dataclasses.replace(mc, device=device))


def run_select(inputs: Inputs, cfg: SelectionConfig, mc: ModelConfig, out: Output, *,
               warmup: WarmupConfig | None = None, warmup_out: str | None = None,
               progress: bool = False) -> RunResult:
    """The whole job: (a warmup adapter,) banks, scores, the top k, every output written
    together once the pool is read again and found unchanged."""
    ctx, mc = _distributed(mc)
    try:
        out_dir = outputs.ensure_out_dir(out.out)
        t0 = time.perf_counter()
        warm, adapter, summary = None, mc.adapter, None
        if warmup is not None:
            warm = ctx.on_main(lambda: ensure_warmup_adapter(
                mc.model, inputs.pool, warmup, out_dir, adapter_dir=warmup_out, device=mc.device,
                progress=progress))
            adapter = warm.adapter_dir
        sel = load_selector(mc, cfg, adapter=adapter, progress=progress)
        banks = sel.fingerprint(_targets(sel, inputs), pool=inputs.pool)
        scores = sel.score(inputs.pool, banks, work_dir=out_dir)
        choice = sel.choose(scores, rounding=out.rounding)
        if ctx.is_main:
            extra = {}
            if warm is not None:
                extra["warmup"] = {"adapter": warm.adapter_dir, "subset_size": len(warm.subset_ids),
                                   "seconds": round(warm.seconds, 3), "final_loss": warm.losses[-1]}
            summary = write_selection(inputs, mc, sel, scores, choice, banks, out_dir, out,
                                      seconds=time.perf_counter() - t0, extra=extra,
                                      loss_curves={"warmup": warm.losses} if warm else None)
    finally:
        ctx.close()
    return RunResult(out_dir, summary)


def write_selection(inputs: Inputs, mc: ModelConfig, sel, scores, choice, banks, out_dir: str,
                    out: Output, *, seconds: float, extra: dict | None = None,
                    loss_curves=None) -> dict:
    """Every output of a selection, written together (:func:`outputs.staged`) from the pool as
    re-checked against the digests it was scored with."""
    from trim_fast.selection import select_top_k

    cfg = sel.config
    wanted = set(choice.indices)
    if out.layout == "less":
        for t_i in range(len(scores.tasks)):
            wanted.update(select_top_k(scores.score[t_i], choice.k).tolist())
    checked = recheck_pool(inputs.pool, inputs.digests, wanted)
    cols = outputs.score_columns(scores, choice.combined, choice.indices, inputs.digests)
    fmt = outputs.resolve_output_format(out.output_format, sorted(set(scores.sources)))
    name = outputs.coreset_name(cfg.fraction, cfg.k, fmt)
    with outputs.staged(out_dir) as stage:
        outputs.write_table(cols, stage)
        outputs.write_coreset(checked.take(choice.indices), os.path.join(stage, name), fmt)
        if out.layout == "less":  # one folder per task, as LESS writes them
            less_name = outputs.coreset_name(cfg.fraction, cfg.k, "jsonl", layout="less")
            for t_i, task in enumerate(scores.tasks):
                outputs.write_less_task(os.path.join(stage, task), scores, t_i, choice.k, checked,
                                        less_name)
        summary = outputs.summary(cfg, scores, choice, banks, seconds=seconds)
        summary["model"] = {"name": sel.model_name}
        summary["resolved"] = {"model": as_dict(mc), "selection": as_dict(cfg),
                               "layout": out.layout, "output_format": fmt}
        summary["outputs"] = {"coreset": name, "table": ["scores.parquet", "sorted.csv"],
                              "report": "report.png"}
        summary.update(extra or {})
        outputs.write_json(summary, os.path.join(stage, "summary.json"))
        outputs.write_report(cols, os.path.join(stage, "report.png"), loss_curves=loss_curves)
    logger.info("selected %d of %d -> %s", len(choice.indices), len(scores),
                os.path.join(out_dir, name))
    refuse_empty_selection(choice, len(scores), out_dir)
    return summary


def refuse_empty_selection(choice, size: int, out_dir: str) -> None:
    """Nothing selected is a failed run (exit 2), though its score table is written."""
    if not choice.indices:
        raise DataError(f"nothing selected: none of the {size} pool example(s) has a scored token "
                        f"(every score is -inf); see {os.path.join(out_dir, 'scores.parquet')} "
                        "(n_counted, n_scored) and check --scope and the targets")


def ensure_warmup_adapter(model: str | None, pool, wcfg: WarmupConfig, out_dir: str, *,
                          adapter_dir: str | None = None, device: str | None = None,
                          progress: bool = False):
    """The warmup adapter a selection scores with (default ``OUT/warmup_adapter``): the one
    already there when it was trained on this model, pool and settings, else a new one."""
    from trim_fast.models.loading import load_tokenizer, model_id
    from trim_fast.warmup import reusable_adapter, run_warmup

    adapter_dir = adapter_dir or os.path.join(out_dir, "warmup_adapter")
    reused = reusable_adapter(adapter_dir, model_id(model), pool, wcfg)  # streams: never the whole pool
    if reused is not None:
        return reused
    logger.info("warmup: %g of the pool, r=%d alpha=%g lr=%g epochs=%d batch=%d", wcfg.fraction,
                wcfg.r, wcfg.alpha, wcfg.lr, wcfg.epochs, wcfg.effective_batch)
    result = run_warmup(model, pool, load_tokenizer(model), wcfg, adapter_dir, device=device,
                        progress=progress)
    logger.info("warmup: %d examples, %d steps, loss %.4f -> %.4f in %.1fs -> %s",
                len(result.subset_ids), len(result.losses), result.losses[0], result.losses[-1],
                result.seconds, adapter_dir)
    return result


def estimate(inputs: Inputs, cfg: SelectionConfig, mc: ModelConfig, *,
             progress: bool = False) -> dict:
    """What a run would do: examples, tokens (from a sample), and the forward time estimated
    from a short forward measured here. Loads the model; writes nothing."""
    import itertools

    import torch

    from trim_fast.capture.forward import loop_for
    from trim_fast.models.prepare import forward_model
    from trim_fast.scoring.engine import tokenize_chunk

    sel = load_selector(mc, cfg, progress=progress)
    size = inputs.size
    sample = list(itertools.islice(iter(inputs.pool), 256))
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
    tasks = {n: r.count() for n, r in (inputs.tasks or {}).items()}
    return {"pool_examples": size, "target_tasks": tasks or {"in_domain": min(cfg.target_sample, size)},
            "tokens_per_example_sampled": round(per_example, 1), "sampled_examples": len(sample),
            "estimated_pool_tokens": int(est_tokens), "measured_forward_tokens_per_s": round(tok_s, 1),
            "estimated_scoring_seconds": float(f"{est_tokens / max(tok_s, 1e-9):.3g}"),  # tiny models: keep it > 0
            "device": str(device), "chunks": -(-size // cfg.chunk_size)}


def run_fingerprint(inputs: Inputs, cfg: SelectionConfig, mc: ModelConfig, out: str, *,
                    progress: bool = False) -> dict[str, str]:
    """Banks of the target tasks (in-domain: of a pool sample) -> ``OUT/banks/<task>.safetensors``."""
    from trim_fast.api import require_center_pool

    if inputs.tasks is None and inputs.pool is None:
        raise DataError("no --targets given and no --pool to sample in-domain targets from")
    require_center_pool(cfg, inputs.pool)  # before the model loads
    out_dir = outputs.ensure_out_dir(out)
    os.makedirs(os.path.join(out_dir, "banks"), exist_ok=True)
    sel = load_selector(mc, cfg, progress=progress)
    paths = {}
    for name, bank in sel.fingerprint(_targets(sel, inputs), pool=inputs.pool).items():
        paths[name] = os.path.join(out_dir, "banks", f"{name}.safetensors")
        bank.save(paths[name])
        logger.info("wrote %s", paths[name])
    return paths


def bank_settings(banks: dict, given: dict) -> dict:
    """The settings the banks were built with (which a scoring run takes); a ``given`` value
    that contradicts them is refused, naming its flag."""
    first = next(iter(banks.values())).meta["settings"]
    from_banks = {k: first[k] for k in BANK_FIELDS if k in first}
    for k, v in from_banks.items():
        if k in given and given[k] != v:
            raise BankMismatchError(f"--{k.replace('_', '-')} {given[k]} contradicts the banks, "
                                    f"built with {k}={v!r}; drop the flag or rebuild the banks")
    return from_banks


def run_score(inputs: Inputs, banks: dict, cfg: SelectionConfig, mc: ModelConfig, out: str, *,
              progress: bool = False) -> None:
    """Bank files + pool -> the score table, its summary and report."""
    ctx, mc = _distributed(mc)
    try:
        out_dir = outputs.ensure_out_dir(out)
        t0 = time.perf_counter()
        sel = load_selector(mc, cfg, progress=progress)
        scores = sel.score(inputs.pool, banks, work_dir=out_dir)
        choice = sel.choose(scores)
        if ctx.is_main:
            recheck_pool(inputs.pool, inputs.digests, ())
            cols = outputs.score_columns(scores, choice.combined, choice.indices, inputs.digests)
            summary = outputs.summary(sel.config, scores, choice, banks,
                                      seconds=time.perf_counter() - t0)
            with outputs.staged(out_dir) as stage:
                outputs.write_table(cols, stage)
                outputs.write_json(summary, os.path.join(stage, "summary.json"))
                outputs.write_report(cols, os.path.join(stage, "report.png"))
    finally:
        ctx.close()


def run_pick(pool, scores_path: str, cfg: SelectionConfig, out: Output) -> str:
    """A score table + its pool -> the coreset (the table read back and checked against the
    pool by identity and content first). Returns the coreset's path."""
    from trim_fast.run.inputs import check_coreset_format
    from trim_fast.run.score_table import read_score_table
    from trim_fast.selection import choose

    out_dir = outputs.ensure_out_dir(out.out)
    check_coreset_format(pool, out.output_format)
    table = read_score_table(scores_path, pool)
    choice = choose(table.scores, combine=cfg.combine, fraction=cfg.fraction, k=cfg.k,
                    rounding=out.rounding)
    fmt = outputs.resolve_output_format(out.output_format, table.sources)
    path = os.path.join(out_dir, outputs.coreset_name(cfg.fraction, cfg.k, fmt))
    selected = pool.take(choice.indices)
    for i, ex in zip(choice.indices, selected):  # read again: still the records checked above
        if ex.digest() != table.digests[16 * i:16 * i + 16]:
            raise DataError(f"{ex.source}:{ex.line}: the pool changed while pick ran; nothing "
                            "was written: run it again")
    outputs.write_coreset(selected, path, fmt)
    logger.info("selected %d of %d -> %s", len(choice.indices), len(table.digests) // 16, path)
    refuse_empty_selection(choice, len(table.digests) // 16, os.path.dirname(scores_path) or ".")
    return path


__all__ = ["Output", "RunResult", "check_before_loading", "load_selector", "run_select",
           "write_selection", "ensure_warmup_adapter", "estimate", "run_fingerprint",
           "bank_settings", "run_score", "run_pick", "refuse_empty_selection"]
