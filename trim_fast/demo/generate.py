"""Deterministic demo data: a labelled instruction pool of several clearly different task
families, plus held-out target examples per family.

Families: arithmetic word problems with worked answers, Python questions answered from the
standard library's own docstrings, unit conversions, list sorting, JSON reformatting, and a hard
negative for conversions: checking whether a stated conversion is right (same vocabulary,
different task). Every record carries a ``family`` field. Run as a script to write the files::

    python -m trim_fast.demo.generate OUT_DIR [--pool-size 1000] [--targets 8] [--seed 0]
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import random

from trim_fast.errors import ConfigError
from trim_fast.demo import common

FAMILIES = ("arithmetic", "python_docs", "unit_conversion", "conversion_check", "list_sorting",
            "json_reformat")

_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lea"]
_ITEMS = ["apples", "pencils", "stamps", "marbles", "books", "cookies", "coins", "shells"]


def _arithmetic(rng: random.Random):
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b, c = rng.randint(3, 60), rng.randint(2, 40), rng.randint(2, 9)
    kind = rng.randrange(3)
    if kind == 0:
        q = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?"
        ans = f"{name} starts with {a} {item}. Buying {b} more gives {a} + {b} = {a + b}. Answer: {a + b}."
    elif kind == 1:
        a = a + b
        q = f"{name} had {a} {item} and gave {b} to a friend. How many {item} are left?"
        ans = f"{name} had {a} {item}. Giving away {b} leaves {a} - {b} = {a - b}. Answer: {a - b}."
    else:
        q = f"{name} packs {c} boxes with {b} {item} in each box. How many {item} are packed in total?"
        ans = f"There are {c} boxes of {b} {item}, so {c} x {b} = {c * b}. Answer: {c * b}."
    return q, ans


_DOC_FUNCS = [
    "os.path.join", "os.path.splitext", "os.path.basename", "os.path.dirname", "os.path.exists",
    "os.getcwd", "os.listdir", "os.makedirs", "math.sqrt", "math.gcd", "math.isclose",
    "math.floor", "math.ceil", "math.log", "json.dumps", "json.loads", "re.sub", "re.match",
    "re.findall", "re.split", "random.choice", "random.shuffle", "random.randint",
    "itertools.chain", "itertools.product", "itertools.permutations", "functools.reduce",
    "functools.partial", "collections.Counter", "collections.deque", "collections.namedtuple",
    "textwrap.dedent", "textwrap.wrap", "shutil.copyfile", "shutil.rmtree", "heapq.heappush",
    "heapq.heappop", "bisect.bisect_left", "bisect.insort", "statistics.mean",
    "statistics.median", "string.capwords", "time.sleep", "time.time", "copy.deepcopy",
    "operator.itemgetter", "fnmatch.fnmatch", "glob.glob", "base64.b64encode", "zlib.crc32",
]
_DOC_QUESTIONS = ["What does `{f}` do in Python?", "Explain the Python function `{f}`.",
                  "I found `{f}` in some code. What is it for?",
                  "How does `{f}` from the standard library behave?"]


def _docstring(qualname: str) -> str:
    mod, _, attr = qualname.rpartition(".")
    doc = inspect.getdoc(getattr(importlib.import_module(mod), attr)) or ""
    paragraph = doc.strip().split("\n\n")[0]
    return " ".join(paragraph.split())[:400] or f"{qualname} is part of the standard library."


def _python_docs(rng: random.Random):
    f = rng.choice(_DOC_FUNCS)
    q = rng.choice(_DOC_QUESTIONS).format(f=f)
    return q, f"`{f}`: {_docstring(f)}"


_UNITS = [("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("kilograms", "grams", 1000),
          ("hours", "minutes", 60), ("minutes", "seconds", 60), ("liters", "milliliters", 1000),
          ("feet", "inches", 12), ("days", "hours", 24), ("yards", "feet", 3)]


def _unit_conversion(rng: random.Random):
    big, small, factor = rng.choice(_UNITS)
    v = rng.randint(2, 90)
    if rng.random() < 0.5:
        q = f"Convert {v} {big} to {small}."
        ans = f"One of the {big} is {factor} {small}, so {v} {big} = {v} x {factor} = {v * factor} {small}."
    else:
        q = f"How many {big} is {v * factor} {small}?"
        ans = f"Divide by {factor}: {v * factor} / {factor} = {v}, so {v * factor} {small} = {v} {big}."
    return q, ans


def _conversion_check(rng: random.Random):
    big, small, factor = rng.choice(_UNITS)
    v = rng.randint(2, 90)
    right = rng.random() < 0.5
    stated = v * factor if right else v * factor + rng.choice([-1, 1]) * rng.randint(1, factor)
    q = f"A student wrote that {v} {big} equals {stated} {small}. Is the student correct? Answer yes or no."
    verdict = "Yes, the student is correct." if right else f"No. The right value is {v * factor} {small}."
    return q, f"{verdict} (Checked: {v} x {factor} = {v * factor}.)"


def _list_sorting(rng: random.Random):
    xs = rng.sample(range(1, 100), rng.randint(4, 8))
    desc = rng.random() < 0.3
    order = "descending" if desc else "ascending"
    q = f"Sort this list in {order} order: {xs}"
    return q, f"{sorted(xs, reverse=desc)}"


_KEYS = ["name", "age", "city", "email", "score", "team", "level", "country"]
_VALUES = {"name": _NAMES, "city": ["Oslo", "Lima", "Pune", "Kyiv", "Accra", "Quito"],
           "country": ["Peru", "Chad", "Laos", "Fiji"], "team": ["red", "blue", "green"],
           "email": ["a@x.org", "b@y.net", "c@z.com"]}


def _json_reformat(rng: random.Random):
    keys = rng.sample(_KEYS, rng.randint(2, 4))
    obj = {k: (rng.choice(_VALUES[k]) if k in _VALUES else rng.randint(1, 99)) for k in keys}
    if rng.random() < 0.5:
        q = f"Reformat this JSON with sorted keys and an indent of 2 spaces: {json.dumps(obj)}"
        ans = json.dumps(obj, sort_keys=True, indent=2)
    else:
        q = f"Minify this JSON onto one line:\n{json.dumps(obj, indent=4)}"
        ans = json.dumps(obj, separators=(",", ":"))
    return q, ans


_GENERATORS = {
    "arithmetic": _arithmetic, "python_docs": _python_docs, "unit_conversion": _unit_conversion,
    "conversion_check": _conversion_check, "list_sorting": _list_sorting,
    "json_reformat": _json_reformat,
}


def make_example(family: str, rng: random.Random) -> tuple[str, str]:
    return _GENERATORS[family](rng)


def generate(out_dir: str, *, pool_size: int = 1000, targets_per_family: int = 8,
             seed: int = 0) -> dict:
    """Write ``pool_chat.jsonl`` (chat ``messages``), ``pool_alpaca.jsonl`` (Alpaca) and
    ``targets/<family>.jsonl``; return a manifest of paths and family counts."""
    if pool_size < len(FAMILIES):
        raise ConfigError(f"pool_size must be at least {len(FAMILIES)}")
    os.makedirs(os.path.join(out_dir, "targets"), exist_ok=True)
    rng = random.Random(seed)
    records = []
    for i in range(pool_size):
        fam = FAMILIES[i % len(FAMILIES)]
        q, a = make_example(fam, rng)
        records.append((fam, q, a))
    rng.shuffle(records)
    counts = {f: sum(1 for fam, _, _ in records if fam == f) for f in FAMILIES}
    pool_paths = common.write_pool(out_dir, records, "pool")
    pool_texts = {(q, a) for _, q, a in records}
    target_paths = {}
    trng = random.Random(seed + 1_000_003)
    for fam in FAMILIES:
        path = os.path.join(out_dir, "targets", f"{fam}.jsonl")
        lines = []
        for _ in range(1000):  # held out: never a copy of a pool example
            q, a = make_example(fam, trng)
            if (q, a) in pool_texts:
                continue
            rec = {"id": f"target-{fam}-{len(lines)}", "family": fam,
                   "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            lines.append(json.dumps(rec) + "\n")
            if len(lines) == targets_per_family:
                break
        common.write_if_changed(path, "".join(lines))
        target_paths[fam] = path
    return {"pool": pool_paths, "targets": target_paths, "family_counts": counts}


def heldout_examples(family: str, n: int, *, seed: int, exclude=()) -> list:
    """``n`` new examples of ``family`` (chat format), none equal to an example in ``exclude``."""
    return common.heldout_examples(make_example, family, n, seed=seed, exclude=exclude)


def main(argv=None) -> None:
    common.main(argv, __doc__, generate, "--pool-size", 1000)


if __name__ == "__main__":
    main()
