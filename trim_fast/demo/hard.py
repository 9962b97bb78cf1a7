"""A hard labelled pool: task families that share their vocabulary but not their task.

The demo pool (:mod:`trim_fast.demo.generate`) has families that differ in topic, so any selector
finds them. Here every family has a partner that uses the same words for a different task, so a
selector has to read what is asked, not what it is about. Four pairs, eight families:

==================  ==================  =====================================================
family              partner             how the tasks differ
==================  ==================  =====================================================
``http_meaning``    ``http_code``       lookup vs inverse lookup: "what does HTTP 404 mean?" /
                                        "which status code means 'Not Found'?"
``unit_convert``    ``unit_check``      producing vs checking: "convert 3 km to miles" /
                                        "is 3 km = 1.86 miles right?"
``rot13_encode``    ``rot13_decode``    direction of a mapping: encode a phrase / decode one
``doc_explain``     ``doc_quiz``        answering vs asking: explain a function from its
                                        docstring / write a quiz question about it
==================  ==================  =====================================================

Real text comes from the standard library: ``http.HTTPStatus`` phrases and descriptions,
``unicodedata`` character names, docstrings through ``inspect``, and ``codecs``' rot13. The text
therefore depends on the Python version; for one interpreter it is deterministic by seed.

Every record carries ``family`` and ``id``; the pool alternates chat ``messages`` and Alpaca
records, targets are chat records never equal to a pool example. Run as a script::

    python -m trim_fast.demo.hard OUT_DIR [--per-family 60] [--targets 8] [--seed 0]
"""
from __future__ import annotations

import codecs
import functools
import http
import importlib
import inspect
import json
import os
import random
import unicodedata

from trim_fast.demo import common

PAIRS = (
    ("http_meaning", "http_code"),
    ("unit_convert", "unit_check"),
    ("rot13_encode", "rot13_decode"),
    ("doc_explain", "doc_quiz"),
)
FAMILIES = tuple(f for pair in PAIRS for f in pair)
PARTNER = {a: b for a, b in PAIRS} | {b: a for a, b in PAIRS}

# ---------------------------------------------------------------------------------------------
# real text from the standard library
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _statuses() -> tuple[tuple[int, str, str], ...]:
    """(code, phrase, description) of every HTTPStatus with a description."""
    return tuple((int(s), s.phrase, s.description.rstrip(".")) for s in http.HTTPStatus if s.description)


_DOC_MODULES = (
    "base64", "binascii", "bisect", "calendar", "codecs", "colorsys", "copy", "csv", "difflib",
    "fnmatch", "functools", "glob", "gzip", "heapq", "html", "inspect", "ipaddress", "itertools",
    "json", "keyword", "math", "operator", "os.path", "pprint", "random", "re", "secrets",
    "shlex", "shutil", "statistics", "string", "struct", "tempfile", "textwrap", "time",
    "unicodedata", "urllib.parse", "uuid", "warnings", "zlib",
)


@functools.lru_cache(maxsize=None)
def _docstrings() -> tuple[tuple[str, str], ...]:
    """(qualified name, first docstring paragraph) of public standard-library functions whose
    first paragraph is a plain sentence of 40-240 characters."""
    out, seen_docs = [], set()
    for mod_name in _DOC_MODULES:
        mod = importlib.import_module(mod_name)
        names = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
        for name in sorted(set(names)):
            obj = getattr(mod, name, None)
            if not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                continue
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            para = " ".join(doc.strip().split("\n\n")[0].split())
            if not 40 <= len(para) <= 240 or "(" in para.split(" ")[0] or para in seen_docs:
                continue
            if not para[0].isupper():
                continue
            seen_docs.add(para)
            out.append((f"{mod_name}.{name}", para))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _phrases() -> tuple[str, ...]:
    """Short real phrases to encode: HTTP descriptions and Unicode character names."""
    out = [d for _, _, d in _statuses() if len(d) <= 60]
    for cp in list(range(0xC0, 0x180)) + list(range(0x391, 0x3CA)) + list(range(0x2190, 0x21A0)) \
            + list(range(0x2200, 0x2240)):
        name = unicodedata.name(chr(cp), "")
        if name:
            out.append(name.lower())
    return tuple(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------
# families: each returns (user message, assistant message)
# ---------------------------------------------------------------------------------------------

_MEANING_Q = ("What does HTTP status code {c} mean?",
              "My server returned HTTP {c}. What does that status code mean?",
              "Explain the HTTP status code {c}.",
              "What is the meaning of status {c} in HTTP?")
_CODE_Q = ("Which HTTP status code means '{p}'?",
           "What is the status code for '{p}' in HTTP?",
           "A server answers '{p}': {d}. Which HTTP status code is that?",
           "What HTTP code does a server send for '{p}'?")


def _http_meaning(rng: random.Random):
    c, p, d = rng.choice(_statuses())
    q = rng.choice(_MEANING_Q).format(c=c)
    return q, f"HTTP status code {c} means '{p}': {d}."


def _http_code(rng: random.Random):
    c, p, d = rng.choice(_statuses())
    q = rng.choice(_CODE_Q).format(p=p, d=d.lower())
    return q, f"The HTTP status code is {c} ('{p}'): {d}."


# from-unit, to-unit, factor (exact or to 6 significant digits)
_UNITS = (("kilometers", "miles", 0.621371), ("miles", "kilometers", 1.609344),
          ("kilograms", "pounds", 2.204623), ("pounds", "kilograms", 0.453592),
          ("inches", "centimeters", 2.54), ("centimeters", "inches", 0.393701),
          ("liters", "gallons", 0.264172), ("gallons", "liters", 3.785412),
          ("feet", "meters", 0.3048), ("meters", "feet", 3.28084),
          ("ounces", "grams", 28.349523), ("grams", "ounces", 0.035274))
_CONVERT_Q = ("Convert {v} {a} to {b}.", "How many {b} are in {v} {a}?", "Express {v} {a} in {b}.",
              "What is {v} {a} in {b}?")
_CHECK_Q = ("Is it right that {v} {a} = {s} {b}?", "A student wrote {v} {a} = {s} {b}. Is that correct?",
            "Check this conversion: {v} {a} = {s} {b}.", "Is {v} {a} equal to {s} {b}?")


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _unit_convert(rng: random.Random):
    a, b, f = rng.choice(_UNITS)
    v = rng.randint(2, 95)
    q = rng.choice(_CONVERT_Q).format(v=v, a=a, b=b)
    r = _fmt(v * f)
    return q, f"One of the {a} is {f:g} {b}, so {v} {a} = {v} x {f:g} = {r} {b}."


def _unit_check(rng: random.Random):
    a, b, f = rng.choice(_UNITS)
    v = rng.randint(2, 95)
    r = _fmt(v * f)
    right = rng.random() < 0.5
    s = r if right else _fmt(v * f * rng.choice((0.5, 0.9, 1.1, 1.5, 2.0, 10.0)))
    if s == r:
        right = True
    q = rng.choice(_CHECK_Q).format(v=v, a=a, b=b, s=s)
    verdict = "Yes, that is correct" if right else f"No, that is wrong: it is {r} {b}, not {s} {b}"
    return q, f"{verdict}. One of the {a} is {f:g} {b}, so {v} {a} = {v} x {f:g} = {r} {b}."


_ENCODE_Q = ("Encode this text with ROT13: {x}", "Apply the ROT13 cipher to '{x}'.",
             "Write '{x}' in ROT13.", "What is '{x}' after ROT13 encoding?")
_DECODE_Q = ("Decode this ROT13 text: {x}", "This message is in ROT13: '{x}'. What does it say?",
             "Undo the ROT13 cipher on '{x}'.", "What is '{x}' after ROT13 decoding?")


def _rot13(s: str) -> str:
    return codecs.encode(s, "rot13")


def _rot13_encode(rng: random.Random):
    plain = rng.choice(_phrases())
    return rng.choice(_ENCODE_Q).format(x=plain), f"In ROT13, '{plain}' becomes '{_rot13(plain)}'."


def _rot13_decode(rng: random.Random):
    plain = rng.choice(_phrases())
    enc = _rot13(plain)
    return rng.choice(_DECODE_Q).format(x=enc), f"Decoded from ROT13, '{enc}' is '{plain}'."


_EXPLAIN_Q = ("What does `{f}` do in Python?", "Explain the Python function `{f}`.",
              "I found `{f}` in some code. What is it for?",
              "How does `{f}` from the standard library behave?")
_QUIZ_Q = ("Write a quiz question whose answer is the Python function `{f}`. It does this: {d}",
           "Ask me a question about `{f}` to test whether I know what it does.",
           "Make a flashcard question for the Python function `{f}` ({d})",
           "I am studying `{f}`. Quiz me on it.")


def _doc_explain(rng: random.Random):
    f, d = rng.choice(_docstrings())
    return rng.choice(_EXPLAIN_Q).format(f=f), f"`{f}`: {d}"


def _doc_quiz(rng: random.Random):
    f, d = rng.choice(_docstrings())
    q = rng.choice(_QUIZ_Q).format(f=f, d=d)
    return q, f"Question: Which Python function does this: \"{d}\"? (Answer: `{f}`)"


_GENERATORS = {
    "http_meaning": _http_meaning, "http_code": _http_code,
    "unit_convert": _unit_convert, "unit_check": _unit_check,
    "rot13_encode": _rot13_encode, "rot13_decode": _rot13_decode,
    "doc_explain": _doc_explain, "doc_quiz": _doc_quiz,
}


# The first-word variant: each family's questions open with a word it shares with a family of
# another pair, as real pools share "How", "What", "Convert" across tasks. The first content
# token's state is the template's, so a selector that counts it matches every record opening
# with a target's first word (issue 18).
FIRST_WORDS = {"http_meaning": "Hi", "rot13_decode": "Hi", "http_code": "Please",
               "unit_convert": "Please", "unit_check": "Quick", "doc_explain": "Quick",
               "rot13_encode": "Now", "doc_quiz": "Now"}


def make_example(family: str, rng: random.Random, *, first_words: bool = False) -> tuple[str, str]:
    """One (user message, assistant message) of ``family`` (with ``first_words``, the question
    opens with the family's word of :data:`FIRST_WORDS`)."""
    if family not in _GENERATORS:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    q, a = _GENERATORS[family](rng)
    if first_words:
        q = f"{FIRST_WORDS[family]} {q[0].lower()}{q[1:]}"
    return q, a


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


def _unique(family: str, rng: random.Random, n: int, taken: set,
            first_words: bool = False) -> list[tuple[str, str]]:
    """``n`` examples of ``family`` not in ``taken`` (which grows)."""
    out = []
    for _ in range(200 * n):
        qa = make_example(family, rng, first_words=first_words)
        if qa in taken:
            continue
        taken.add(qa)
        out.append(qa)
        if len(out) == n:
            return out
    raise ValueError(f"could not make {n} distinct examples of {family!r}")


def generate(out_dir: str, *, per_family: int = 60, targets_per_family: int = 8, seed: int = 0,
             first_words: bool = False) -> dict:
    """Write ``pool_chat.jsonl`` (chat ``messages``), ``pool_alpaca.jsonl`` (Alpaca) and
    ``targets/<family>.jsonl``; return the manifest: ``pool`` (paths), ``targets``
    (family -> path), ``family_counts`` and ``pairs`` (family -> partner family).

    Pool examples are distinct within the pool; targets are distinct and never equal to a pool
    example (same user and assistant text). ``first_words``: the first-word variant (every
    question opens with a word shared with a family of another pair, :data:`FIRST_WORDS`)."""
    if per_family < 1 or targets_per_family < 1:
        raise ValueError("per_family and targets_per_family must be at least 1")
    os.makedirs(os.path.join(out_dir, "targets"), exist_ok=True)
    rng = random.Random(seed)
    taken: set = set()
    records = [(fam, q, a) for fam in FAMILIES for q, a in _unique(fam, rng, per_family, taken, first_words)]
    rng.shuffle(records)
    pool_paths = common.write_pool(out_dir, records, "hard")
    target_paths = {}
    trng = random.Random(seed + 1_000_003)
    for fam in FAMILIES:
        lines = []
        for q, a in _unique(fam, trng, targets_per_family, taken, first_words):
            rec = {"id": f"target-{fam}-{len(lines)}", "family": fam,
                   "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            lines.append(json.dumps(rec) + "\n")
        path = os.path.join(out_dir, "targets", f"{fam}.jsonl")
        common.write_if_changed(path, "".join(lines))
        target_paths[fam] = path
    return {"pool": pool_paths, "targets": target_paths,
            "family_counts": {f: per_family for f in FAMILIES}, "pairs": dict(PARTNER)}


def heldout_examples(family: str, n: int, *, seed: int, exclude=()) -> list:
    """``n`` new examples of ``family`` (chat format), none equal to an example in ``exclude``."""
    return common.heldout_examples(make_example, family, n, seed=seed, exclude=exclude)


def main(argv=None) -> None:
    common.main(argv, __doc__, generate, "--per-family", 60)


if __name__ == "__main__":
    main()
