"""What both labelled-pool generators (the demo pool and the hard pool) share: writing files so
that a rerun leaves identical ones untouched, and drawing held-out examples of a family."""
from __future__ import annotations

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
