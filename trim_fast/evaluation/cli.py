"""``trim-fast eval``: selection quality on a labelled pool: the generated demo pool (families that
differ in topic: the floor check), the generated hard pool (families in pairs that share their
vocabulary but not their task), or your own files."""
from __future__ import annotations

import logging
import os
import random

from trim_fast.errors import ConfigError
from trim_fast.config import ModelConfig, SelectionConfig, WarmupConfig

logger = logging.getLogger("trim_fast")

DOWNSTREAM_FAMILY = {"demo": "unit_conversion", "hard": "unit_check", "firstword": "unit_check"}


def add_eval_parser(sub) -> None:
    from trim_fast.flags import add_settings

    p = sub.add_parser("eval", help="selection quality on a labelled pool: the selectors against "
                       "mean-pooled cosine, BM25 and random; the study's variants; warmup; a "
                       "downstream check")
    p.add_argument("--pool-kind", choices=("demo", "hard", "firstword"), default="demo",
                   help="generated pool when no --pool is given: demo (families differ in topic), "
                        "hard (families in vocabulary-sharing pairs) or firstword (the hard pool "
                        "with each family's questions opening with a word shared with a family of "
                        "another pair)")
    p.add_argument("--pool", action="append", default=[], metavar="SOURCE",
                   help="labelled pool (records carry 'family'); default: generated (--pool-kind)")
    p.add_argument("--targets", action="append", default=[], metavar="SOURCE",
                   help="one source per family (its records' 'family' names it)")
    p.add_argument("--pool-size", type=int, default=1000, help="demo pool size")
    p.add_argument("--per-family", type=int, default=60, help="hard pool: examples per family")
    p.add_argument("--targets-per-family", type=int, default=8)
    p.add_argument("--no-study", action="store_true", help="only the headline selectors")
    p.add_argument("--no-checks", action="store_true",
                   help="skip the checks of issue 18 (the pool as LLaMA-Factory rows; the "
                        "multi-task coreset per combine mode)")
    p.add_argument("--warmup", action="store_true",
                   help="also evaluate after the SPEC 5 LoRA warmup on the pool (defaults of "
                        "WarmupConfig)")
    p.add_argument("--downstream", default=None,
                   help="family for the LoRA downstream check (default: unit_conversion on the "
                        "demo pool, unit_check on the hard pool; 'none' to skip)")
    p.add_argument("--heldout", default=None,
                   help="held-out examples of the downstream family (default: generated)")
    p.add_argument("--heldout-size", type=int, default=32)
    p.add_argument("--downstream-epochs", type=int, default=2)
    p.add_argument("--downstream-lr", type=float, default=2e-4)
    p.add_argument("--downstream-r", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    add_settings(p, ModelConfig, only=("model", "device", "dtype"))
    add_settings(p, SelectionConfig, only=("max_tokens", "shared_prefix", "cut_tails", "hidden_layer"))


def cmd_eval(values: dict) -> int:
    from trim_fast.api import Selector
    from trim_fast.data import DataError, open_records, open_tasks
    from trim_fast.demo import generate as demo_pool
    from trim_fast.demo import hard as hard_pool
    from trim_fast.evaluation.quality import run_downstream, run_quality
    from trim_fast.evaluation.report import save_result
    from trim_fast.flags import build_settings
    from trim_fast.run.outputs import ensure_out_dir

    out_dir = ensure_out_dir(values["out"])
    if bool(values["pool"]) != bool(values["targets"]):
        raise ConfigError("give both --pool and --targets, or neither (a generated pool is used)")
    kind = None if values["pool"] else values["pool_kind"]
    generator = {"demo": demo_pool, "hard": hard_pool, "firstword": hard_pool, None: None}[kind]
    if kind == "demo":
        manifest = demo_pool.generate(os.path.join(out_dir, "data"), pool_size=values["pool_size"],
                                      targets_per_family=values["targets_per_family"],
                                      seed=values["seed"])
    elif kind in ("hard", "firstword"):
        manifest = hard_pool.generate(os.path.join(out_dir, "data"), per_family=values["per_family"],
                                      targets_per_family=values["targets_per_family"],
                                      seed=values["seed"], first_words=kind == "firstword")
    if kind is not None:
        values["pool"], values["targets"] = manifest["pool"], list(manifest["targets"].values())
    pool = open_records(values["pool"])
    targets = open_tasks(list(values["targets"]))  # one task per file, named as --targets names it
    if pool.count() == 0:
        raise DataError("eval: the pool is empty")
    mc = build_settings(ModelConfig, values)
    cfg = build_settings(SelectionConfig, values, base=SelectionConfig(seed=values["seed"]))
    progress = not values["no_progress"]
    selector = Selector(mc.model, config=cfg, device=mc.device, dtype=mc.dtype, progress=progress)
    study = not values["no_study"]
    checks = not values["no_checks"]
    result = run_quality(selector, pool, targets, study=study, checks=checks)

    warmed = None
    if values["warmup"]:
        from trim_fast.warmup import run_warmup

        adapter = os.path.join(out_dir, "warmup_adapter")
        warm = run_warmup(mc.model, list(pool), selector.tokenizer, WarmupConfig(seed=values["seed"]),
                          adapter, device=mc.device, progress=progress)
        logger.info("warmup: %d examples, %d steps, loss %.4f -> %.4f", len(warm.subset_ids),
                    len(warm.losses), warm.losses[0], warm.losses[-1])
        warm_selector = Selector(mc.model, config=cfg, adapter=adapter, device=mc.device,
                                 dtype=mc.dtype, progress=progress)
        warmed = run_quality(warm_selector, pool, targets, study=study, checks=checks)
        warmed["warmup"] = {"subset_size": len(warm.subset_ids), "losses": warm.losses,
                            "seconds": warm.seconds}

    downstream = None
    family = values["downstream"] or DOWNSTREAM_FAMILY.get(kind)
    if family not in (None, "none"):
        task = next((t for t, f in result["families"].items() if f["family"] == family), None)
        if task is None:
            raise ConfigError(f"--downstream {family!r}: no target source of that family")
        examples = list(pool)
        if values["heldout"]:
            heldout = list(open_records(values["heldout"]))
        elif generator is not None:
            heldout = generator.heldout_examples(family, values["heldout_size"],
                                                 seed=values["seed"] + 7_777, exclude=examples)
        else:
            raise ConfigError("--downstream needs --heldout SOURCE with new examples of that family")
        chosen = result["selections"][task]
        k = len(chosen["trim_default"])
        selections = {name: chosen[name] for name in ("trim_default", "trim_paper", "mean_cosine")}
        selections["random"] = random.Random(values["seed"]).sample(range(len(examples)), k)
        downstream = run_downstream(mc.model, selector.tokenizer, examples, selections, heldout,
                                    family, out_dir, seed=values["seed"],
                                    warmup_overrides={"epochs": values["downstream_epochs"],
                                                      "lr": values["downstream_lr"],
                                                      "r": values["downstream_r"],
                                                      "alpha": 2 * values["downstream_r"],
                                                      "effective_batch": 8})
    save_result(result, out_dir, downstream, warmed=warmed)
    with open(os.path.join(out_dir, "quality.md"), encoding="utf-8") as f:
        print(f.read())
    return 0


__all__ = ["add_eval_parser", "cmd_eval"]
