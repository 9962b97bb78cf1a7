"""What both labelled-pool generators (the demo pool and the hard pool) share: writing files so
that a rerun leaves identical ones untouched, the pool's two files, held-out examples of a family,
and the command line."""
from __future__ import annotations

import argparse
import json
import os
import random
from typing import Callable


def write_if_changed(path: str, text: str) -> None:
    """Atomic write; an identical file is left untouched (a rerun into the same directory then
    reads as the same pool, and nothing is rewritten for nothing)."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    from trim_fast.run.files import atomic_open

    with atomic_open(path) as f:
        f.write(text)


def heldout_examples(make_example: Callable[[str, random.Random], tuple[str, str]], family: str,
                     n: int, *, seed: int, exclude=()) -> list:
    """``n`` new chat examples of ``family`` from ``make_example``, none equal to an example in
    ``exclude`` nor to each other."""
    from trim_fast.data import record_to_example

    seen = {json.dumps(e.messages) for e in exclude if getattr(e, "messages", None) is not None}
    rng = random.Random(seed)
    out = []
    for _ in range(200 * n):
        q, a = make_example(family, rng)
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if json.dumps(msgs) in seen:
            continue
        seen.add(json.dumps(msgs))
        out.append(record_to_example(
            {"id": f"heldout-{family}-{len(out)}", "family": family, "messages": msgs}, "messages",
            source=f"heldout:{family}", line=len(out) + 1))
        if len(out) == n:
            return out
    raise ValueError(f"could not make {n} new examples of {family!r}")


def write_pool(out_dir: str, records: list[tuple[str, str, str]], id_prefix: str) -> list[str]:
    """``(family, question, answer)`` records, alternately as chat ``messages`` in
    ``pool_chat.jsonl`` and as Alpaca in ``pool_alpaca.jsonl`` (ids ``{id_prefix}-{i:06d}``);
    the two paths."""
    chat, alpaca = [], []
    for i, (fam, q, a) in enumerate(records):
        rid = f"{id_prefix}-{i:06d}"
        if i % 2 == 0:
            rec = {"id": rid, "family": fam,
                   "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            chat.append(json.dumps(rec) + "\n")
        else:
            rec = {"id": rid, "family": fam, "instruction": q, "input": "", "output": a}
            alpaca.append(json.dumps(rec) + "\n")
    paths = [os.path.join(out_dir, "pool_chat.jsonl"), os.path.join(out_dir, "pool_alpaca.jsonl")]
    for path, lines in zip(paths, (chat, alpaca)):
        write_if_changed(path, "".join(lines))
    return paths


def main(argv, doc: str, generate: Callable[..., dict], size_flag: str, size_default: int) -> None:
    """``python -m trim_fast.demo.<generator> OUT_DIR [SIZE_FLAG N] [--targets N] [--seed N]``:
    write the files and print the manifest."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument(size_flag, type=int, default=size_default)
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = vars(ap.parse_args(argv))
    size_kw = size_flag.lstrip("-").replace("-", "_")
    manifest = generate(args["out_dir"], **{size_kw: args[size_kw]},
                        targets_per_family=args["targets"], seed=args["seed"])
    print(json.dumps(manifest, indent=2))


def print_precision(title: str, summary: dict) -> None:
    """The demo's table: each task's precision and its share of the written coreset."""
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
