"""INTERIM (replaced by the data branch): minimal open_records."""
from __future__ import annotations

from trim_fast.data.formats import DataError, Example, detect_format, read_examples, to_example


class Records:
    def __init__(self, parts, name=None):
        self.parts = parts

    def __iter__(self):
        seen = {}
        for kind, obj, name in self.parts:
            it = read_examples(obj) if kind == "file" else iter(obj) if kind == "examples" else _iter_rows(obj, name)
            for ex in it:
                if ex.id in seen:
                    raise DataError(f"{ex.source}:{ex.line}: duplicate id {ex.id!r} (first seen at {seen[ex.id]})")
                seen[ex.id] = f"{ex.source}:{ex.line}"
                yield ex

    def describe(self):
        return [{"kind": k, "path": o if k == "file" else name} for k, o, name in self.parts]

    def take(self, indices):
        want = {i: pos for pos, i in enumerate(indices)}
        out = [None] * len(indices)
        for i, ex in enumerate(self):
            if i in want:
                out[want[i]] = ex
        return out

    def count(self):
        return sum(1 for _ in self)


def _iter_rows(rows, name):
    fmt = None
    for i, rec in enumerate(rows, start=1):
        rec = dict(rec)
        fmt = fmt or detect_format(rec)
        if fmt is None:
            raise DataError(f"{name}:{i}: unknown format")
        yield to_example(rec, fmt, name, i)


def open_records(source, **_) -> Records:
    if isinstance(source, Records):
        return source
    if isinstance(source, str):
        return Records([("file", source, source)])
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, str) for s in source):
        return Records([("file", s, s) for s in source])
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, Example) for s in source):
        return Records([("examples", list(source), "examples")])
    if isinstance(source, (list, tuple)):
        return Records([("rows", list(source), "records")])
    return Records([("rows", source, getattr(source, "info", None) and "dataset" or "records")])
