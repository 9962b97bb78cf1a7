"""The chat template, applied with a sentinel in place of each content (so the contents' spans can
be found in the rendered text), and the template tokens it writes around messages: the runs of
text between contents that hold a special token, and which tokens of a pre-tokenized row are
such template (:func:`template_mask`)."""
from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import Any

from trim_fast.data.formats import DataError

_SENTINEL = "\u2063TRIMFAST{}\u2063"  # invisible separator: never in real text by accident
_SENTINEL_RE = re.compile("\u2063TRIMFAST(\\d+)\u2063")
_CALL_NAME = "\u2063TRIMCALL{}\u2063"  # stands for a tool call's name when probing the template
_CALL_ARGS = "\u2063TRIMARGS{}\u2063"  # ... and for its arguments
_CALL_MARK_RE = re.compile("\u2063TRIM(CALL|ARGS)(\\d+)\u2063")
_MARKER = "\u2063TRIM"


@dataclass
class _Turn:
    """One message as the template sees it, and the text pieces that fill its content."""

    message: dict[str, Any]  # role, tool_calls, name, tool_call_id: everything but content
    parts: list[tuple[str, bool]] = field(default_factory=list)  # (text, is the record's content)

    @property
    def role(self) -> str:
        return self.message["role"]

    def has_text(self) -> bool:
        return any(text for text, _ in self.parts)

    def real(self) -> dict[str, Any]:
        """The message with its content, as the template would get it from the record."""
        return dict(self.message, content="".join(text for text, _ in self.parts))


def fallback_template(messages: list[dict[str, Any]]) -> str:
    return "".join(f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages)


def _probe_calls(calls: list[dict[str, Any]], first: int) -> list[dict[str, Any]]:
    """The calls with their names and arguments replaced by markers numbered from ``first``."""
    return [dict(c, function={"name": _CALL_NAME.format(first + j),
                              "arguments": {_CALL_ARGS.format(first + j): ""}})
            for j, c in enumerate(calls)]


def _apply(tokenizer, turns: list[_Turn], tools: list | None, *, probe: bool = False) -> str:
    """The rendered template with a sentinel for each non-empty content (and, with ``probe``,
    markers for the tool calls' names and arguments)."""
    msgs, n_calls = [], 0
    for i, t in enumerate(turns):
        m = dict(t.message, content=_SENTINEL.format(i) if t.has_text() else "")
        if probe and m.get("tool_calls"):
            m["tool_calls"] = _probe_calls(m["tool_calls"], n_calls)
            n_calls += len(m["tool_calls"])
        msgs.append(m)
    if not getattr(tokenizer, "chat_template", None):
        return fallback_template(msgs)
    try:
        return tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False)
    except Exception as exc:  # noqa: BLE001 - jinja raises what the template raises
        raise DataError(f"the chat template cannot render this record: {type(exc).__name__}: "
                        f"{exc}") from exc


def _split(templated: str) -> tuple[list[str], list[int]]:
    """Segments between sentinels, and the sentinels' message indices."""
    pieces = _SENTINEL_RE.split(templated)
    return pieces[0::2], [int(x) for x in pieces[1::2]]


_TEMPLATE_RUNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def template_runs(tokenizer) -> tuple[tuple[int, ...], ...]:
    """Token ids of the text the tokenizer's chat template writes around messages (role headers,
    separators, a default system prompt, end markers), those runs that hold a special token.

    Found by rendering short conversations with a sentinel in place of each content and
    tokenising the text between the sentinels; cached per tokenizer. Empty without a chat
    template (the fallback template has no special tokens to anchor a run)."""
    try:
        return _TEMPLATE_RUNS[tokenizer]
    except (KeyError, TypeError):
        pass
    runs: set[tuple[int, ...]] = set()
    if getattr(tokenizer, "chat_template", None):
        special = set(tokenizer.all_special_ids)
        probes = ([("user", "assistant")], [("system", "user", "assistant")],
                  [("user", "assistant", "user", "assistant")])
        for (roles,) in probes:
            turns = [_Turn({"role": r}, [("x", True)]) for r in roles]
            try:
                pieces, _ = _split(_apply(tokenizer, turns, None))
            except DataError:
                continue  # a template that refuses this shape (e.g. no system role)
            for piece in pieces:
                if piece:
                    ids = tuple(tokenizer(piece, add_special_tokens=False)["input_ids"])
                    if special.intersection(ids):
                        runs.add(ids)
    out = tuple(sorted(runs))
    try:
        _TEMPLATE_RUNS[tokenizer] = out
    except TypeError:
        pass
    return out


def template_mask(ids: list[int], tokenizer, special: set | None = None) -> list[bool]:
    """Which tokens of a pre-tokenized row are template: special tokens, and the tokens around
    each special token that continue a run of :func:`template_runs` there (``<|im_end|>`` and the
    newline after it; ``<|im_start|>assistant`` and its newline; the default system prompt). A
    newline in a message's own text is not next to a special token, so it stays content."""
    if special is None:
        special = set(tokenizer.all_special_ids)
    at = _run_positions(tokenizer)
    mask = [tid in special for tid in ids]
    n = len(ids)
    for p, tid in enumerate(ids):
        if not mask[p] or tid not in at:
            continue
        for run, o in at[tid]:
            left = 0
            while o - left > 0 and p - left > 0 and ids[p - left - 1] == run[o - left - 1]:
                left += 1
            right = 0
            while (o + right + 1 < len(run) and p + right + 1 < n
                   and ids[p + right + 1] == run[o + right + 1]):
                right += 1
            for q in range(p - left, p + right + 1):
                mask[q] = True
    return mask


_RUN_POSITIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _run_positions(tokenizer) -> dict[int, list[tuple[tuple[int, ...], int]]]:
    """``{special id: [(run, offset of that id in the run)]}`` over :func:`template_runs`."""
    try:
        return _RUN_POSITIONS[tokenizer]
    except (KeyError, TypeError):
        pass
    special = set(tokenizer.all_special_ids)
    out: dict[int, list] = {}
    for run in template_runs(tokenizer):
        for o, tid in enumerate(run):
            if tid in special:
                out.setdefault(tid, []).append((run, o))
    try:
        _RUN_POSITIONS[tokenizer] = out
    except TypeError:
        pass
    return out
