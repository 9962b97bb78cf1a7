"""Markdown tables from ``bench/study/results/*.json`` (written by sweep.py).

    python bench/study/report.py summary            # key rows, every cache
    python bench/study/report.py families hard0     # per-family P@5% and P@|family|, key rows
    python bench/study/report.py all hard0          # every row of one cache
"""
from __future__ import annotations

import json
import os
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CACHES = ("hard0", "hard0w", "hard1", "hard1w", "demo0", "demo0w", "mixed0")
DESCR = {"hard0": "hard pool, seed 0, no warmup", "hard0w": "hard pool, seed 0, SPEC warmup",
         "hard1": "hard pool, seed 1, no warmup", "hard1w": "hard pool, seed 1, SPEC warmup",
         "demo0": "demo pool (1000), no warmup", "demo0w": "demo pool (1000), SPEC warmup",
         "mixed0": "hard0 + demo0 mixed (1480, 14 tasks), no warmup"}

KEY = [
    "random (10 seeds)",
    "BM25 (k1 1.5, b 0.75)",
    "mean-cos, layer final",
    "mean-cos, layer final, centred",
    "mean-cos, layer 20",
    "mean-cos, layer 20, centred",
    "@best-meancos-mean",
    "@best-meancos-worst",
    "paper (SPEC defaults)",
    "paper, centred",
    "paper, layer 20, centred",
    "paper, fallback skip",
    "PROPOSED: skip, final layer, centred, no idf",
    "proposed, not centred",
    "proposed, layer 20 (stop early)",
    "proposed, contrast cos, prior 8",
]


def load(cache):
    with open(os.path.join(RESULTS, f"{cache}.json")) as f:
        return json.load(f)


def rows_by_label(res):
    return {r["label"]: r for r in res["rows"]}


def best_meancos(res, key):
    mc = [r for r in res["rows"] if r["label"].startswith("mean-cos")]
    return max(mc, key=lambda r: (r[key], r["meanF"] if key != "meanF" else r["minF"]))


def resolve(res, label):
    if label == "@best-meancos-mean":
        r = best_meancos(res, "meanF")
        return dict(r, label=f"mean-cos best by mean P@fam: {r['label'][len('mean-cos, '):]}")
    if label == "@best-meancos-worst":
        r = best_meancos(res, "minF")
        return dict(r, label=f"mean-cos best by worst P@fam: {r['label'][len('mean-cos, '):]}")
    return rows_by_label(res).get(label)


def fmt(x):
    return f"{x:.3f}"


def summary(caches=CACHES):
    out = []
    for cache in caches:
        if not os.path.exists(os.path.join(RESULTS, f"{cache}.json")):
            continue
        res = load(cache)
        out += [f"#### {cache}: {DESCR.get(cache, '')} ({res['n']} examples, k at 5% = {res['k5']})", "",
                "| selector | mean P@5% | worst P@5% | mean P@\\|family\\| | worst P@\\|family\\| |",
                "|---|---|---|---|---|"]
        for label in KEY:
            r = resolve(res, label)
            if r is None:
                continue
            name = r["label"]
            if label.startswith("PROPOSED"):
                name = f"**{name}**"
            out.append(f"| {name} | {fmt(r['mean5'])} | {fmt(r['min5'])} | {fmt(r['meanF'])} | {fmt(r['minF'])} |")
        out.append("")
    return "\n".join(out)


def families(cache):
    res = load(cache)
    tasks = res["tasks"]
    out = [f"#### {cache}: {DESCR.get(cache, '')}: per family, P@5% / P@|family|", "",
           "| selector | " + " | ".join(tasks) + " | mean | worst |",
           "|---|" + "---|" * (len(tasks) + 2)]
    for label in KEY:
        r = resolve(res, label)
        if r is None:
            continue
        cells = [f"{r['per_task'][t][0]:.2f} / {r['per_task'][t][1]:.2f}" for t in tasks]
        out.append(f"| {r['label']} | " + " | ".join(cells) +
                   f" | {r['mean5']:.3f} / {r['meanF']:.3f} | {r['min5']:.3f} / {r['minF']:.3f} |")
    return "\n".join(out) + "\n"


def families_all(cache):
    """Every row of one cache, per family: P@5% / P@|family|."""
    res = load(cache)
    tasks = res["tasks"]
    out = [f"#### {cache}: {DESCR.get(cache, '')}: every variant per family, P@5% / P@|family|", "",
           "| selector | " + " | ".join(tasks) + " | mean | worst |", "|---|" + "---|" * (len(tasks) + 2)]
    for r in res["rows"]:
        cells = [f"{r['per_task'][t][0]:.2f} / {r['per_task'][t][1]:.2f}" for t in tasks]
        out.append(f"| {r['label']} | " + " | ".join(cells) +
                   f" | {r['mean5']:.3f} / {r['meanF']:.3f} | {r['min5']:.3f} / {r['minF']:.3f} |")
    return "\n".join(out) + "\n"


def all_rows(cache):
    res = load(cache)
    out = [f"#### {cache}: {DESCR.get(cache, '')}: every variant", "",
           "| group | selector | mean P@5% | worst P@5% | mean P@\\|family\\| | worst P@\\|family\\| |",
           "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        out.append(f"| {r['group']} | {r['label']} | {fmt(r['mean5'])} | {fmt(r['min5'])} | "
                   f"{fmt(r['meanF'])} | {fmt(r['minF'])} |")
    return "\n".join(out) + "\n"


def compact(caches, labels):
    """One row per selector, columns mean/worst P@|family| per cache."""
    res = {c: load(c) for c in caches if os.path.exists(os.path.join(RESULTS, f"{c}.json"))}
    out = ["| selector | " + " | ".join(f"{c} mean / worst P@fam" for c in res) + " |",
           "|---|" + "---|" * len(res)]
    for label in labels:
        cells, name = [], label
        for c, r0 in res.items():
            r = resolve(r0, label)
            if r is None:
                cells.append("")
                continue
            if label.startswith("@"):
                name = "mean-cos, best layer per pool (oracle)" if "mean" in label.split("-")[-1] else \
                    "mean-cos, best layer per pool by worst family (oracle)"
                cells.append(f"{fmt(r['meanF'])} / {fmt(r['minF'])} ({r['label'].split(': ')[1]})")
            else:
                cells.append(f"{fmt(r['meanF'])} / {fmt(r['minF'])}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "summary":
        print(summary())
    elif what == "families":
        print(families(sys.argv[2]))
    elif what == "families-all":
        print(families_all(sys.argv[2]))
    elif what == "all":
        print(all_rows(sys.argv[2]))
    elif what == "compact":
        print(compact(CACHES, KEY))
