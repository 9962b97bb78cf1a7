"""Every variant of the study, scored from one cache (no model): baselines, the paper's scoring
and its ablations, and the study's candidates. Writes ``bench/study/results/<cache>.json``.

    python bench/study/sweep.py hard0 [--only GROUP ...]

Statistics of the pool (the mean state for centring and whitening, per-token-id means for the
contrast) come from a seeded 5% sample of the pool (``stat_size = round(0.05 |P|)``, seed 0),
unless a row says otherwise; IDF from the whole pool's token ids.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import lib  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# The proposed default (see RESULTS.md): matched tokens only, no IDF, last layer, centred.
PROPOSED = dict(fallback="skip", idf=False, centre=True, layer="final", w_cov=0.0)


def variants(depth: int) -> list[tuple[str, str, dict]]:
    """(group, label, options of lib.token_selector); baselines are handled separately."""
    v = []
    # the paper's scoring (SPEC) and its ablations, at the last layer
    v += [("paper", "paper (SPEC defaults)", {})]
    abl = [("idf=none", dict(idf=False)), ("pooling mean", dict(w_max=0, w_cov=0)),
           ("pooling max", dict(w_mean=0, w_max=1, w_cov=0)), ("pooling mean+max", dict(w_cov=0)),
           ("lambda=0", dict(lam=0.0)), ("lambda=0.5", dict(lam=0.5)), ("lambda=1", dict(lam=1.0)),
           ("fallback skip", dict(fallback="skip")), ("alpha uniform", dict(uniform=True)),
           ("alpha row only", dict(w_row=1.0, w_col=0.0)), ("alpha column only", dict(w_row=0.0, w_col=1.0)),
           ("L=1", dict(L=1)), ("L=3", dict(L=3)), ("L=all", dict(L="all")),
           ("scope response", dict(scope="response")), ("scope prompt", dict(scope="prompt")),
           ("centred", dict(centre=True)), ("whitened (diag)", dict(whiten=True)),
           ("contrast diff", dict(contrast=True)), ("contrast cos", dict(contrast=True, contrast_mode="cos")),
           ("hybrid + mean-cos L20 centred", dict(hybrid=1.0, hybrid_layer=20))]
    v += [("paper ablations", f"paper, {name}", o) for name, o in abl]
    # layer sweep of the paper's scoring, raw and centred
    for l in list(range(10, depth, 2)):
        v += [("paper layers", f"paper, layer {l}", dict(layer=l)),
              ("paper layers", f"paper, layer {l}, centred", dict(layer=l, centre=True))]
    # the study's candidate: matched tokens only (fallback skip), at every other layer
    for l in list(range(10, depth, 2)) + ["final"]:
        for cen in (False, True):
            for idf in (True, False):
                lab = f"skip, layer {l}{', centred' if cen else ''}{', idf' if idf else ', no idf'}"
                v += [("skip layers", lab, dict(fallback="skip", layer=l, centre=cen, idf=idf))]
    # knobs around the proposed default
    P = PROPOSED
    knobs = [("w_max 0 (mean only)", dict(w_mean=1.0, w_max=0.0)), ("w_max 0.25", dict(w_mean=0.75, w_max=0.25)),
             ("w_max 0.75", dict(w_mean=0.25, w_max=0.75)),
             ("coverage over counted tokens, w 0.05", dict(cov_counted=True, w_cov=0.05)),
             ("coverage over counted tokens, w 0.25", dict(cov_counted=True, w_cov=0.25)),
             ("with idf", dict(idf=True)), ("not centred", dict(centre=False)),
             ("whitened (diag) instead of centred", dict(centre=False, whiten=True)),
             ("alpha uniform", dict(uniform=True)), ("L=all", dict(L="all")),
             ("scope response", dict(scope="response")),
             ("contrast diff", dict(contrast=True)), ("contrast cos", dict(contrast=True, contrast_mode="cos")),
             ("contrast cos, prior 8", dict(contrast=True, contrast_mode="cos", contrast_prior=8.0)),
             ("hybrid + 0.5 mean-cos L20 centred", dict(hybrid=0.5, hybrid_layer=20)),
             ("hybrid + 1.0 mean-cos L20 centred", dict(hybrid=1.0, hybrid_layer=20)),
             ("centring stats from the whole pool", dict(stat_size=None)),
             ("centring stats from a 2% sample", dict(stat_size="2%")),
             ("centring stats from another 5% sample (seed 1)", dict(stat_seed=1)),
             ("layer 20 (stop early)", dict(layer=20)), ("layer 24", dict(layer=24)),
             ("layer 26", dict(layer=26)), ("layer 28", dict(layer=28))]
    v += [("proposed", "PROPOSED: skip, final layer, centred, no idf", dict(P))]
    v += [("proposed knobs", f"proposed, {name}", dict(P, **o)) for name, o in knobs]
    return v


def stat_size_of(cache, value):
    if value is None:
        return None
    if isinstance(value, str) and value.endswith("%"):
        return lib.num_selected(cache.n, float(value[:-1]) / 100)
    return value


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None, help="groups to run (default all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    c = lib.Cache(args.cache)
    default_stat = lib.num_selected(c.n)  # seeded 5% of the pool
    rows = []
    t0 = time.perf_counter()

    def add(group, label, scores, opts=None):
        e = lib.evaluate(c, scores)
        rows.append({"group": group, "label": label, "opts": opts or {}, **e})
        print(f"{label:60s} P5 {e['mean5']:.3f}/{e['min5']:.3f}  PF {e['meanF']:.3f}/{e['minF']:.3f}", flush=True)

    want = lambda g: args.only is None or g in args.only  # noqa: E731
    if want("baselines"):
        e = lib.random_eval(c)
        rows.append({"group": "baselines", "label": "random (10 seeds)", "opts": {}, **e})
        add("baselines", "BM25 (k1 1.5, b 0.75)", lib.bm25(c))
        for l in list(range(1, c.depth)) + ["final"]:
            for cen in (False, True):
                add("baselines", f"mean-cos, layer {l}{', centred' if cen else ''}",
                    lib.mean_cosine(c, l, centre=cen, stat_size=default_stat), {"layer": l, "centre": cen})
    for group, label, opts in variants(c.depth):
        if not want(group):
            continue
        o = dict(opts)
        o["stat_size"] = stat_size_of(c, o.get("stat_size", "5%"))
        add(group, label, lib.token_selector(c, **o), opts)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{args.cache}.json")
    old = []
    if args.only is not None and os.path.exists(path):
        with open(path) as f:
            old = [r for r in json.load(f)["rows"] if r["group"] not in args.only]
    out = {"cache": args.cache, "pool": c.meta["pool_name"], "seed": c.meta["seed"],
           "adapter": c.meta["adapter"], "n": c.n, "tasks": c.tasks, "family_size": c.family_size,
           "k5": lib.num_selected(c.n), "stat_size": default_stat, "rows": old + rows,
           "seconds": time.perf_counter() - t0}
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=str)
    print(f"wrote {path} ({len(rows)} rows, {out['seconds']:.0f}s)")


if __name__ == "__main__":
    main()
