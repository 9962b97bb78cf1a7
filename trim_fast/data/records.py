"""The records of one or more sources: :class:`Records`, re-iterable and streaming, checking every
record's shape and unique id as it is read."""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from trim_fast.data.formats import (
    CUSTOM_FORMAT, DataError, Example, ToMessages, detect_format, matching_formats,
    record_to_example, unknown_format_message)
from trim_fast.data.readers import _DatasetObject, _Examples, _HubDataset, _Reader, _refuse_deep
from trim_fast.data.resolve import _Entry
from trim_fast.digests import code_digest


class Records:
    """Examples of one or more sources, in order; re-iterable (each pass streams anew).

    Ids must be unique across all sources; a repeat is a :class:`DataError` naming both places.
    """

    def __init__(self, entries: list[_Entry], *, format: str | None = None,
                 to_messages: ToMessages | None = None):
        self._entries = entries
        self._format = format
        self._to_messages = to_messages
        self._detected: dict[int, str] = {}

    def __iter__(self) -> Iterator[Example]:
        return self._iter(None)

    def _iter(self, stop_at: int | None) -> Iterator[Example]:
        seen: set[int] = set()  # hashes of ids; a hit is confirmed by a second pass
        position = 0
        for e_i, entry in enumerate(self._entries):
            for ex in self._examples(e_i, entry.reader):
                key = hash(ex.id)
                if key in seen:
                    first = self._first_place(ex.id, position)
                    if first is not None:
                        raise DataError(f"{ex.source}:{ex.line}: duplicate id {ex.id!r} (first "
                                        f"seen at {first})")
                seen.add(key)
                yield ex
                position += 1
                if stop_at is not None and position > stop_at:
                    return

    def _first_place(self, rid: str, before: int) -> str | None:
        for ex in self._iter(before - 1):
            if ex.id == rid:
                return f"{ex.source}:{ex.line}"
        return None

    def _examples(self, e_i: int, reader: _Reader) -> Iterator[Example]:
        if isinstance(reader, _Examples):
            yield from reader.examples
            return
        fmt = self._format
        n = 0
        for line, record, digest in reader.rows():
            where = f"{reader.name}:{line}"
            if record is None or (self._to_messages is None and not isinstance(record, dict)):
                raise DataError(f"{where}: a record must be a JSON object, got "
                                f"{type(record).__name__}")
            if self._to_messages is None:
                _refuse_deep(record, where, reader.deep)
                shape = detect_format(record)
                if self._format is None:
                    # every record, not only the first: a later record with the fields of two
                    # shapes would be read as one of them, the other's fields silently ignored
                    shapes = matching_formats(record)
                    if len(shapes) > 1:  # e.g. a tokenized chat dataset keeps its messages
                        raise DataError(f"{where}: the record has the fields of more than one "
                                        f"shape ({', '.join(shapes)}); say which to read with "
                                        f"--format (format= in Python), e.g. --format {shapes[0]}")
                if fmt is None:
                    if shape is None:
                        raise DataError(f"{where}: {unknown_format_message(record)}")
                    fmt = self._detected[e_i] = shape
                elif self._format is None and shape != fmt:
                    if shape is None:
                        raise DataError(f"{where}: {unknown_format_message(record)}")
                    raise DataError(f"{where}: record is not in the {reader.container}'s format "
                                    f"({fmt}, detected from its first record)")
            ex = record_to_example(record, fmt, source=reader.name, line=line,
                                   to_messages=self._to_messages)
            reader.check_text(record, where)  # after the shape's own, more specific, checks
            ex._digest = digest
            n += 1
            yield ex
        if n == 0:
            what = "empty file" if reader.container == "file" else "empty source"
            raise DataError(f"{reader.name}: {what} (no records)")

    def count(self) -> int:
        """Number of examples (one full streaming pass, validating every record)."""
        return sum(1 for _ in self)

    def take(self, indices: Iterable[int]) -> list[Example]:
        """The examples at these 0-based positions, in the order given (one streaming pass)."""
        indices = [int(i) for i in indices]
        if not indices:
            return []
        if min(indices) < 0:
            raise IndexError(f"take: negative position {min(indices)}")
        wanted = set(indices)
        found: dict[int, Example] = {}
        n = 0
        for n, ex in enumerate(self._iter(max(indices)), start=1):
            if n - 1 in wanted:
                found[n - 1] = ex
        missing = [i for i in indices if i not in found]
        if missing:
            raise IndexError(f"take: position {missing[0]} is past the end ({n} examples)")
        return [found[i] for i in indices]

    def describe(self) -> list[dict[str, Any]]:
        """JSON-able description of each source, for run manifests.

        ``format`` is the forced one, ``custom`` with a ``to_messages`` hook, else the shape
        detected from the first record (read now for local sources; for a hub dataset only once
        it has been iterated, else ``None``).
        """
        out = []
        for e_i, entry in enumerate(self._entries):
            d = entry.reader.describe()
            if entry.glob is not None:
                d["glob"] = entry.glob
            d["format"] = self._format_of(e_i, entry.reader)
            out.append(d)
        return out

    def _format_of(self, e_i: int, reader: _Reader) -> str | None:
        if self._to_messages is not None:  # the hook by name and code: another hook, another run
            return f"{CUSTOM_FORMAT}:{_callable_identity(self._to_messages)}"
        if self._format is not None:
            return self._format
        if e_i not in self._detected and not isinstance(reader, _HubDataset):
            for _line, record, _digest in reader.rows():
                if isinstance(record, dict):
                    self._detected[e_i] = detect_format(record)
                break
        return self._detected.get(e_i)

    @property
    def dataset(self):
        """The ``datasets.Dataset`` these records are, when they are exactly one (else None)."""
        if len(self._entries) == 1 and isinstance(self._entries[0].reader, _DatasetObject):
            return self._entries[0].reader._ds
        return None

    def __repr__(self) -> str:
        names = ", ".join(e.reader.name for e in self._entries[:3])
        more = f", ... ({len(self._entries)} sources)" if len(self._entries) > 3 else ""
        return f"Records({names}{more})"


def _callable_identity(fn) -> str:
    """``module.qualname`` and a digest of the function's code and constants, when it has them."""
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    code = getattr(fn, "__code__", None)
    if code is None:
        return name
    return f"{name}:{code_digest(code)}"
