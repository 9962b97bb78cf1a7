"""``trim-fast eval``: selection quality on a labelled pool (the demo pool by default)."""
from __future__ import annotations

import logging
import os

from trim_fast.config import ModelConfig, SelectionConfig

logger = logging.getLogger("trim_fast")


def add_eval_parser(sub) -> None:
    from trim_fast.flags import add_settings

    p = sub.add_parser("eval", help="selection quality on a labelled pool: TRIM against random, "
                       "mean-pooled cosine and BM25; ablations; a downstream check")
    p.add_argument("--pool", action="append", default=[], metavar="SOURCE",
                   help="labelled pool (records carry 'family'); default: the demo generator's")
    p.add_argument("--targets", action="append", default=[], metavar="SOURCE",
                   help="one source per family (its records' 'family' names it)")
    p.add_argument("--pool-size", type=int, default=1000, help="demo pool size")
    p.add_argument("--targets-per-family", type=int, default=8)
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--downstream", default="unit_conversion",
                   help="family for the LoRA downstream check ('none' to skip)")
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
    add_settings(p, SelectionConfig, only=("method", "max_tokens"))


def cmd_eval(values: dict) -> int:
    from trim_fast.api import Selector
    from trim_fast.flags import build_settings
    from trim_fast.data import DataError, open_records
    from trim_fast.demo.generate import generate, heldout_examples
    from trim_fast.evaluation.quality import run_downstream, run_quality, save_result
    from trim_fast.run.outputs import ensure_out_dir

    out_dir = ensure_out_dir(values["out"])
    if bool(values["pool"]) != bool(values["targets"]):
        raise ValueError("give both --pool and --targets, or neither (the demo data is used)")
    demo = not values["pool"]
    if demo:
        manifest = generate(os.path.join(out_dir, "data"), pool_size=values["pool_size"],
                            targets_per_family=values["targets_per_family"], seed=values["seed"])
        values["pool"], values["targets"] = manifest["pool"], list(manifest["targets"].values())
    pool = open_records(values["pool"])
    targets = {os.path.basename(p).split(".")[0]: open_records(p) for p in values["targets"]}
    if pool.count() == 0:
        raise DataError("eval: the pool is empty")
    mc = build_settings(ModelConfig, values)
    cfg = build_settings(SelectionConfig, values, base=SelectionConfig(seed=values["seed"]))
    selector = Selector(mc.model, config=cfg, device=mc.device, dtype=mc.dtype,
                        progress=not values["no_progress"])
    result = run_quality(selector, pool, targets, ablations=not values["no_ablations"])
    downstream = None
    if values["downstream"] != "none":
        family = values["downstream"]
        task = next((t for t, f in result["families"].items() if f["family"] == family), None)
        if task is None:
            raise ValueError(f"--downstream {family!r}: no target source of that family")
        examples = list(pool)
        if values["heldout"]:
            heldout = list(open_records(values["heldout"]))
        elif demo:
            heldout = heldout_examples(family, values["heldout_size"], seed=values["seed"] + 7_777,
                                       exclude=examples)
        else:
            raise ValueError("--downstream needs --heldout SOURCE with new examples of that family")
        import random

        trim = result["families"][task]["trim_top5"]
        selections = {"TRIM 5%": trim,
                      "random 5%": random.Random(values["seed"]).sample(range(len(examples)), len(trim))}
        downstream = run_downstream(mc.model, selector.tokenizer, examples, selections, heldout,
                                    family, out_dir, seed=values["seed"],
                                    warmup_overrides={"epochs": values["downstream_epochs"],
                                                      "lr": values["downstream_lr"],
                                                      "r": values["downstream_r"],
                                                      "alpha": 2 * values["downstream_r"],
                                                      "effective_batch": 8})
    save_result(result, out_dir, downstream)
    with open(os.path.join(out_dir, "quality.md"), encoding="utf-8") as f:
        print(f.read())
    return 0


__all__ = ["add_eval_parser", "cmd_eval"]
