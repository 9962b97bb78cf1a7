"""Records to examples: one record (a dict) becomes one :class:`Example`, in the shape detected from
its fields (:func:`detect_format`) or forced with ``format=``. The shapes, their fields and
parsers are registered in :mod:`trim_fast.data.shapes` (:data:`~trim_fast.data.shapes.SHAPES`).

A frontend with its own record shape passes ``to_messages=callable(record)`` returning a list of
messages (as in the ``messages`` shape), a plain string (a text record), or a dict
``{"messages": [...], "tools": [...]}``; those examples have format ``custom``.

Nothing the shape knows is dropped, and the record itself is kept untouched in
:attr:`Example.raw` (unknown fields included), so the selection is written back as given. A
missing or null field that the shape needs is a :class:`DataError` naming source, line and
field; an empty string is fine as long as the record has some text somewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from trim_fast.data.messages import _chat_messages, _checked, _tools
from trim_fast.data.shapes import MEDIA_COLUMNS, SHAPES
from trim_fast.digests import value_digest
from trim_fast.errors import DataError

FORMATS = tuple(SHAPES)
CUSTOM_FORMAT = "custom"  # records mapped by a to_messages hook

ToMessages = Callable[[dict], Any]


# DataError lives in trim_fast.errors (the package's error hierarchy); re-exported here


@dataclass
class Example:
    """One record: its id, where it came from, its normalised content and the raw record.

    Exactly one of ``messages`` (chat turns: ``role`` in :data:`~trim_fast.data.messages.ROLES`, ``content`` a string,
    assistant turns may carry ``tool_calls``), ``text`` or ``tokens`` (``(ids, counted)`` of a
    pre-tokenized row) is set.
    """

    id: str
    source: str  # file path as given, or a display name for in-memory / datasets input
    line: int  # 1-based line (JSONL) or row (everything else)
    format: str
    raw: dict[str, Any]
    messages: list[dict[str, Any]] | None = None
    text: str | None = None
    tokens: tuple[list[int], list[bool]] | None = None
    tools: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    _digest: bytes | None = field(default=None, repr=False, compare=False)

    def digest(self) -> bytes:
        """16 bytes identifying the record's content (not its position).

        For a JSONL line it hashes the line's bytes; for any other source a canonical,
        type-tagged serialisation of :attr:`raw` (see :func:`value_digest`). The same record read
        the same way always gives the same digest; any edit gives another one.
        """
        if self._digest is None:
            self._digest = value_digest(self.raw)
        return self._digest

    def content_digest(self) -> bytes:
        """Like :meth:`digest`, without the record's ``id``: two records that say the same thing
        under different ids (or none) share it (for spotting copies in a pool)."""
        return value_digest({k: v for k, v in self.raw.items() if k != "id"})


# ----------------------------------------------------------------------------- detection

def matching_formats(record: dict[str, Any]) -> list[str]:
    """Every shape whose fields the record has, in order of precedence."""
    return [name for name, shape in SHAPES.items() if all(f in record for f in shape.fields)]


def detect_format(record: dict[str, Any]) -> str | None:
    """The record's shape from its fields (the first by precedence), or ``None``."""
    shapes = matching_formats(record)
    return shapes[0] if shapes else None


def unknown_format_message(record: dict[str, Any]) -> str:
    fields = ["+".join(f"'{f}'" for f in shape.fields) for shape in SHAPES.values()]
    return (f"unknown format (record shape): expected one of the fields {', '.join(fields[:-1])} "
            f"or {fields[-1]} (or pass format= / to_messages=); got {sorted(map(str, record))[:8]}")


def _hook_result(result: Any, where: str) -> tuple[list | None, str | None, list | None]:
    if isinstance(result, str):
        return None, _checked(result, where, "the text from to_messages"), None
    if isinstance(result, dict) and "messages" in result:
        return (_chat_messages(result["messages"], where, "to_messages()['messages']"), None,
                _tools(result.get("tools"), where, "to_messages()['tools']"))
    if isinstance(result, (list, tuple)):
        return _chat_messages(result, where, "to_messages()"), None, None
    raise DataError(f"{where}: to_messages returned {type(result).__name__}; expected a list of "
                    "messages, a string or a dict with 'messages' (and 'tools')")


# ----------------------------------------------------------------------------- records

def record_to_example(record: Any, format: str | None, *, source: str, line: int,
                      to_messages: ToMessages | None = None) -> Example:
    """Normalise one record of the given shape (``format``), or raise naming source and line.

    With ``to_messages``, the hook maps the record and ``format`` is ignored.
    """
    where = f"{source}:{line}"
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    rid = record.get("id")
    ex = Example(id=str(rid) if rid is not None else where, source=source, line=line,
                 format=CUSTOM_FORMAT if to_messages is not None else str(format), raw=record)
    if to_messages is not None:
        try:
            result = to_messages(record)
        except Exception as exc:  # noqa: BLE001 - user code; say where it failed
            raise DataError(f"{where}: to_messages failed: {type(exc).__name__}: {exc}") from exc
        ex.messages, ex.text, ex.tools = _hook_result(result, where)
    elif format in SHAPES:
        for name, value in SHAPES[format].parse(record, where).items():
            setattr(ex, name, value)
    else:
        raise DataError(f"{where}: unknown format {format!r}; known: {', '.join(FORMATS)}")
    if to_messages is None and SHAPES[format].chat:
        media = next((k for k in MEDIA_COLUMNS if record.get(k)), None)
        if media is not None:  # LLaMA-Factory's multimodal columns; the text holds placeholders
            raise DataError(f"{where}: field {media!r} holds media; only text is scored (a text-only "
                            f"model cannot see it); remove the column or pass a to_messages hook")
    if ex.tokens is None and not _has_text(ex):
        raise DataError(f"{where}: record has no usable text (every field is empty)")
    for k in ("family", "task"):
        if k in record:
            ex.meta[k] = record[k]
    return ex


def _has_text(ex: Example) -> bool:
    if ex.text is not None:
        return bool(ex.text.strip())
    return any(m["content"].strip() or m.get("tool_calls") for m in ex.messages or ())
