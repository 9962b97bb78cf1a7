"""bf16 forward and early exit (``hidden_layer``) against the fp32 default, on the demo pool
(issue 19): pool-scoring seconds side by side (interleaved rounds, best of), and the selection's
agreement with fp32's (top-k overlap at 5%, max |score difference|).

    python bench/precision_and_exit.py [--pool-size 128] [--layer 20] [--out bench/results/precision_and_exit.json]

The early exit's *quality* cost comes from ``trim-fast eval --pool-kind hard --hidden-layer L``
beside the default run (bench/RESULTS.md); agreement here only says how far the selection moves.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool-size", type=int, default=128)
    ap.add_argument("--layer", type=int, default=20, help="early-exit layer (SmolLM2: 30 blocks)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from trim_fast.api import Selector
    from trim_fast.config import SelectionConfig
    from trim_fast.data import open_records
    from trim_fast.demo.generate import generate
    from trim_fast.selection import num_selected, select_top_k

    data = generate(tempfile.mkdtemp(), pool_size=args.pool_size, targets_per_family=8, seed=0)
    pool = list(open_records(data["pool"]))
    targets = {t: list(open_records(p)) for t, p in list(data["targets"].items())[:3]}
    variants = {"fp32": ("fp32", SelectionConfig()),
                "bf16": ("bf16", SelectionConfig()),
                f"fp32 exit@{args.layer}": ("fp32", SelectionConfig(hidden_layer=args.layer)),
                f"bf16 exit@{args.layer}": ("bf16", SelectionConfig(hidden_layer=args.layer))}
    runs = {}
    for name, (dtype, cfg) in variants.items():
        sel = Selector(None, config=cfg, dtype=dtype)
        runs[name] = (sel, sel.fingerprint(targets, pool=pool))
    seconds = {name: [] for name in runs}
    scores = {}
    for _ in range(args.repeats):  # interleaved: a busy machine slows every variant alike
        for name, (sel, banks) in runs.items():
            t0 = time.perf_counter()
            scores[name] = sel.score(pool, banks).score.float()
            seconds[name].append(time.perf_counter() - t0)
    k = num_selected(len(pool), fraction=0.05)
    ref = scores["fp32"]
    result = {"pool_examples": len(pool), "tasks": list(targets), "k": k,
              "threads": torch.get_num_threads(), "variants": {}}
    for name, s in scores.items():
        fin = torch.isfinite(ref) & torch.isfinite(s)
        overlap = [len(set(select_top_k(ref[t], k).tolist()) & set(select_top_k(s[t], k).tolist())) / k
                   for t in range(ref.shape[0])]
        result["variants"][name] = {
            "seconds_best": min(seconds[name]), "seconds_all": seconds[name],
            "speed_vs_fp32": min(seconds["fp32"]) / min(seconds[name]),
            "topk_overlap_mean": sum(overlap) / len(overlap), "topk_overlap_min": min(overlap),
            "max_abs_dscore": float((s[fin] - ref[fin]).abs().max()) if fin.any() else None}
    print("| variant | scoring s | speed vs fp32 | top-5% overlap (mean/min) | max abs dscore |")
    print("|---|---|---|---|---|")
    for name, v in result["variants"].items():
        print(f"| {name} | {v['seconds_best']:.2f} | {v['speed_vs_fp32']:.2f}x | "
              f"{v['topk_overlap_mean']:.3f} / {v['topk_overlap_min']:.3f} | {v['max_abs_dscore']:.2e} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
