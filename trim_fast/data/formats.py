"""Reading examples: JSONL or Parquet, one format per file, detected from the first record.

Formats: chat ``messages`` (role/content), ShareGPT ``conversations`` (from/value), Alpaca
(``instruction``/``input``/``output``), ``prompt``/``completion`` and plain ``text``. Every
record becomes an :class:`Example` that keeps the raw record, so the selection is written back
unchanged. Bad input raises :class:`DataError` naming the file and line; nothing is skipped.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "model": "assistant", "system": "system", "chatgpt": "assistant", "bing": "assistant"}


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


@dataclass
class Example:
    """One record: its id, where it came from, and its turns (``None`` for plain text)."""

    id: str
    source: str  # file path as given
    line: int  # 1-based line (JSONL) or row (Parquet)
    format: str
    raw: dict[str, Any]
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    tokens: tuple | None = None

    def digest(self) -> bytes:  # INTERIM (replaced by the data branch)
        import hashlib

        return hashlib.blake2b(json.dumps(self.raw, sort_keys=True, default=str).encode(),
                               digest_size=16).digest()


def detect_format(record: dict[str, Any]) -> str | None:
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    return None


def _where(source: str, line: int) -> str:
    return f"{source}:{line}"


def _as_text(value: Any, what: str, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: {what} must be a string, got {type(value).__name__}")
    return value


def to_example(record: Any, fmt: str, source: str, line: int) -> Example:
    """Normalise one record of a known format, or raise naming file and line."""
    where = _where(source, line)
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    rid = record.get("id")
    ex_id = str(rid) if rid is not None else f"{source}:{line}"
    ex = Example(id=ex_id, source=source, line=line, format=fmt, raw=record)
    if fmt == "messages" or fmt == "sharegpt":
        key, role_key, text_key = (("messages", "role", "content") if fmt == "messages"
                                   else ("conversations", "from", "value"))
        turns = record.get(key)
        if not isinstance(turns, list):
            raise DataError(f"{where}: '{key}' must be a list of turns")
        messages = []
        for t_i, turn in enumerate(turns):
            if not isinstance(turn, dict) or role_key not in turn:
                raise DataError(f"{where}: turn {t_i} of '{key}' needs a '{role_key}' field")
            role = str(turn[role_key])
            if fmt == "sharegpt":
                if role not in _SHAREGPT_ROLES:
                    raise DataError(f"{where}: unknown ShareGPT speaker {role!r} in turn {t_i}")
                role = _SHAREGPT_ROLES[role]
            elif role not in ("system", "user", "assistant"):
                raise DataError(f"{where}: unknown role {role!r} in turn {t_i} "
                                "(expected system, user or assistant)")
            messages.append({"role": role, "content": _as_text(turn.get(text_key), "content", where)})
        ex.messages = messages
    elif fmt == "alpaca":
        instruction = _as_text(record.get("instruction"), "'instruction'", where)
        inp = _as_text(record.get("input"), "'input'", where)
        user = instruction if not inp.strip() else f"{instruction}\n\n{inp}"
        ex.messages = [{"role": "user", "content": user},
                       {"role": "assistant", "content": _as_text(record.get("output"), "'output'", where)}]
    elif fmt == "prompt_completion":
        ex.messages = [{"role": "user", "content": _as_text(record.get("prompt"), "'prompt'", where)},
                       {"role": "assistant",
                        "content": _as_text(record.get("completion"), "'completion'", where)}]
    elif fmt == "text":
        ex.text = _as_text(record.get("text"), "'text'", where)
    else:
        raise DataError(f"{where}: unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    usable = ex.text if ex.text is not None else "".join(m["content"] for m in ex.messages)
    if not usable.strip():
        raise DataError(f"{where}: record has no usable text (every field is empty)")
    for k in ("family", "task"):
        if k in record:
            ex.meta[k] = record[k]
    return ex


def _iter_records(path: str) -> Iterator[tuple[int, Any]]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        row = 0
        for batch in pf.iter_batches():
            for rec in batch.to_pylist():
                row += 1
                yield row, rec
        return
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: malformed JSON ({exc.msg} at column {exc.colno})") from exc


def read_examples(path: str) -> Iterator[Example]:
    """Stream the examples of one JSONL/Parquet file; the format comes from its first record."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if not (path.endswith(".jsonl") or path.endswith(".json") or path.endswith(".parquet")):
        raise DataError(f"{path}: unknown file type; expected .jsonl or .parquet")
    fmt = None
    count = 0
    for line, rec in _iter_records(path):
        if fmt is None:
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{line}: a record must be a JSON object")
            fmt = detect_format(rec)
            if fmt is None:
                raise DataError(f"{path}:{line}: unknown format: expected one of the fields "
                                "'messages', 'conversations', 'instruction'+'output', "
                                f"'prompt'+'completion' or 'text'; got {sorted(rec)[:8]}")
        elif isinstance(rec, dict) and detect_format(rec) != fmt:
            raise DataError(f"{path}:{line}: record is not in the file's format ({fmt}, "
                            "detected from its first record)")
        count += 1
        yield to_example(rec, fmt, path, line)
    if count == 0:
        raise DataError(f"{path}: empty file (no records)")


def load_examples(paths: list[str]) -> list[Example]:
    """All examples of several files, in order; ids must be unique across files."""
    out: list[Example] = []
    seen: dict[str, str] = {}
    for p in paths:
        for ex in read_examples(p):
            if ex.id in seen:
                raise DataError(f"{ex.source}:{ex.line}: duplicate id {ex.id!r} (first seen at "
                                f"{seen[ex.id]})")
            seen[ex.id] = f"{ex.source}:{ex.line}"
            out.append(ex)
    return out
