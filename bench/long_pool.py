"""A pool of benchmark-question length for `trim-fast bench --pool` (issue 19): the hard pool's
chat questions, three user questions joined per record, the third's answer (about 120 tokens
per example with SmolLM2's template; benchmark questions average ~133).

    python bench/long_pool.py OUT.jsonl [--per-family 40]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--per-family", type=int, default=40)
    args = ap.parse_args()
    from trim_fast.data import open_records
    from trim_fast.demo import hard

    tmp = tempfile.mkdtemp()
    hard.generate(tmp, per_family=args.per_family, targets_per_family=8, seed=0)
    chats = [r for r in open_records(sorted(glob.glob(os.path.join(tmp, "pool_*.jsonl")))) if r.messages]

    def user(r):
        return next(m["content"] for m in r.messages if m["role"] == "user")

    with open(args.out, "w", encoding="utf-8") as f:
        for i in range(len(chats)):
            a, b, c = chats[i], chats[(i + 7) % len(chats)], chats[(i + 13) % len(chats)]
            answer = next(m["content"] for m in c.messages if m["role"] == "assistant")
            f.write(json.dumps({"id": f"long-{i}", "family": c.meta.get("family"), "messages": [
                {"role": "user", "content": "\n\n".join([user(a), user(b), user(c)])},
                {"role": "assistant", "content": answer}]}) + "\n")


if __name__ == "__main__":
    main()
