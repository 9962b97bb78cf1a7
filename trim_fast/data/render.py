"""Rendering an example to token ids and the mask of tokens that count (SPEC section 0).

Chats go through the tokenizer's chat template (``apply_chat_template(messages, tools=...)``).
To know which characters are a message's own content (and not template text: role headers,
separators, a default system prompt the template inserts), the template is rendered with a
unique sentinel in place of each non-empty content; the real contents are then put back where the
sentinels landed, which gives their exact character spans. Tokens whose characters overlap a
counted span, and that are not special tokens, count.

Scopes: ``all`` counts every turn's content; ``response`` the assistant turns, including their
tool calls; ``prompt`` everything else (system, user, tool results).

Tools and tool calls. Whether a template renders them is checked per example, by rendering with
and without them:

- tool calls the template renders: the template is rendered a second time with markers in
  place of each call's name and arguments; where the two renderings differ (between the same
  content sentinels) is the calls' text, from the first call's name to the end of the last
  call's arguments, and it counts with the assistant turn. Template text inside that range
  (``", "arguments": ``, or between two calls of one turn) counts with it; wrappers outside it
  (``<tool_call>`` tags) and the closing punctuation shared with the markers do not.
- tool calls the template ignores (e.g. SmolLM2's template), or renders without their name or
  arguments, or only by dropping the turn's content: each call is written as one line of JSON
  ``{"name": ..., "arguments": ...}`` appended to its assistant turn's content (after a
  newline), so nothing is dropped; it counts as that turn's content.
- the record's ``tools`` (schemas) are context, not content: they are run through the model but
  never count, in any scope. A template that renders them gets them with ``tools=``; when it
  ignores them they are written as ``Tools:`` and one JSON line per tool at the end of the
  first system turn (a new system turn first when there is none).

Without a chat template (e.g. BERT), the documented fallback template is::

    ### User:\\n{content}\\n\\n### Assistant:\\n{content}\\n\\n   (System, User, Assistant, Tool)

with tool calls and tools written as JSON as above.

Pre-tokenized examples are not rendered: their ids are used as given, a token counts when the
row's mask says so and it is not template (a special token, or the chat template's text around
one: :func:`~trim_fast.data.template.template_mask`), and ``max_length`` truncates as for others.

In every shape the example's first content token does not count (:data:`LEAD_TOKENS`): what
comes before it is the same template prefix in every example, so its hidden state is fixed by
its id alone (SPEC 0, issue 18).
"""
from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

from trim_fast.data.formats import DataError, Example
from trim_fast.data.template import (_CALL_ARGS, _CALL_MARK_RE, _CALL_NAME, _MARKER, _SENTINEL,
                                     _SENTINEL_RE, _Turn, _apply, _split, template_mask)
from trim_fast.digests import tokenizer_identity
from trim_fast.types import SCOPES


@dataclass
class Tokenized:
    """Token ids of the rendered example and which of them count (scope applied)."""

    ids: list[int]
    counted: list[bool]
    truncated: int = 0  # tokens cut by max_length


def _role_counts(role: str, scope: str) -> bool:
    if scope == "all":
        return True
    if scope == "response":
        return role == "assistant"
    return role != "assistant"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _turns(messages: list[dict[str, Any]]) -> list[_Turn]:
    turns = []
    for i, m in enumerate(messages):
        content = m.get("content") or ""
        if _MARKER in content:
            raise DataError(f"message {i} contains trim_fast's internal marker {_MARKER!r}")
        turns.append(_Turn({k: v for k, v in m.items() if k != "content"}, [(content, True)]))
    return turns


def _inline_tools(turns: list[_Turn], tools: list) -> list[_Turn]:
    text = "Tools:\n" + "\n".join(_json(t) for t in tools)
    if turns and turns[0].role == "system":
        first = turns[0]
        sep = "\n\n" if first.has_text() else ""
        return [_Turn(first.message, first.parts + [(sep + text, False)])] + turns[1:]
    return [_Turn({"role": "system"}, [(text, False)])] + turns


def _inline_calls(turns: list[_Turn]) -> list[_Turn]:
    out = []
    for t in turns:
        calls = t.message.get("tool_calls")
        if not calls:
            out.append(t)
            continue
        parts = list(t.parts)
        for call in calls:
            fn = call.get("function", call)
            text = _json({"name": fn.get("name"), "arguments": fn.get("arguments")})
            parts.append((("\n" if any(p for p, _ in parts) else "") + text, True))
        out.append(_Turn({k: v for k, v in t.message.items() if k != "tool_calls"}, parts))
    return out


def _call_regions(real: str, probe: str, turns: list[_Turn]) -> list[tuple[int, int]] | None:
    """Character ranges of ``real`` that hold the tool calls, from the first call's name to
    the last one's arguments between two contents; ``None`` when the template does not render
    every call's name and arguments, or drops a content beside them."""
    n_calls = sum(len(t.message.get("tool_calls") or ()) for t in turns)
    if not all(_CALL_NAME.format(j) in probe and _CALL_ARGS.format(j) in probe
               for j in range(n_calls)):
        return None
    seg_a, ids_a = _split(real)
    seg_b, ids_b = _split(probe)
    if ids_a != ids_b or ids_a != [i for i, t in enumerate(turns) if t.has_text()]:
        return None
    regions, pos = [], 0
    for k, (a, b) in enumerate(zip(seg_a, seg_b)):
        if a != b:
            p = 0
            while p < min(len(a), len(b)) and a[p] == b[p]:
                p += 1
            s = 0
            while s < min(len(a), len(b)) - p and a[-1 - s] == b[-1 - s]:
                s += 1
            if len(a) - s > p:
                regions += [(pos + x, pos + y) for x, y in _per_call(a, b, p, len(a) - s)]
        pos += len(a)
        if k < len(ids_a):
            pos += len(_SENTINEL.format(ids_a[k]))
    return regions


def _per_call(real: str, probe: str, start: int, end: int) -> list[tuple[int, int]]:
    """Split ``real[start:end]``, the calls of one turn, into the names and arguments: the
    template text between two of them (the tail of the probe's text between two markers that is
    found in ``real`` there) does not count, as template text never does."""
    marks = sorted((m.start(), m.end(), m.group(1), int(m.group(2)))
                   for m in _CALL_MARK_RE.finditer(probe))
    out, cur = [], start
    for (_, ea, _, _), (sb, _, _, _) in zip(marks, marks[1:]):
        gap = probe[ea:sb]
        for n in range(len(gap), 0, -1):  # the longest tail of the gap that is template text
            at = real.find(gap[-n:], cur, end)
            if at >= 0 and n > 1:
                out.append((cur, at))
                cur = at + n
                break
    out.append((cur, end))
    return [(x, y) for x, y in out if y > x]


def _fill(templated: str, turns: list[_Turn], call_regions: list[tuple[int, int]],
          scope: str) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]]]:
    """Put the contents back in place of the sentinels; spans of what counts under scope, and of
    every message's content (any role: what is not template text)."""
    expected = [i for i, t in enumerate(turns) if t.has_text()]
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    content: list[tuple[int, int]] = []
    length = cursor = 0
    shifts: list[tuple[int, int]] = [(0, 0)]  # (position in templated, shift to output)
    found = []
    for m in _SENTINEL_RE.finditer(templated):
        i = int(m.group(1))
        found.append(i)
        if found != expected[:len(found)]:
            missing = next((j for j in expected if j not in found[:-1]), i)
            raise DataError(f"the chat template dropped or rewrote message {missing} "
                            f"({turns[missing].role}); cannot locate its content")
        out.append(templated[cursor:m.start()])
        length += m.start() - cursor
        for text, is_content in turns[i].parts:
            if is_content and text:
                content.append((length, length + len(text)))
            if is_content and text and _role_counts(turns[i].role, scope) and not (
                    scope == "response" and turns[i].message.get("weight") == 0):  # not trained on
                spans.append((length, length + len(text)))
            out.append(text)
            length += len(text)
        cursor = m.end()
        shifts.append((cursor, length - cursor))
    if found != expected:
        missing = next(j for j in expected if j not in found)
        raise DataError(f"the chat template dropped or rewrote message {missing} "
                        f"({turns[missing].role}); cannot locate its content")
    out.append(templated[cursor:])
    if call_regions:
        starts = [s for s, _ in shifts]
        for a, b in call_regions:
            shift = shifts[bisect_right(starts, a) - 1][1]
            content.append((a + shift, b + shift))
            if _role_counts("assistant", scope):
                spans.append((a + shift, b + shift))
        spans.sort()
        content.sort()
    return "".join(out), spans, content


def render_messages(tokenizer, messages: list[dict[str, Any]], scope: str,
                    tools: list | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of what counts under ``scope``."""
    text, spans, _ = _render(tokenizer, messages, scope, tools)
    return text, spans


def _render(tokenizer, messages: list[dict[str, Any]], scope: str, tools: list | None
            ) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]]]:
    """:func:`render_messages`, and the spans of every message's content (any scope)."""
    turns = _turns(messages)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if tools and (not has_template
                  or _apply(tokenizer, turns, tools) == _apply(tokenizer, turns, None)):
        turns, tools = _inline_tools(turns, tools), None  # the template ignores them
    templated, regions = None, []
    if any(t.message.get("tool_calls") for t in turns):
        if has_template:
            real = _apply(tokenizer, turns, tools)
            try:
                regions = _call_regions(real, _apply(tokenizer, turns, tools, probe=True), turns)
            except DataError:  # the template takes the real calls but not the probe's
                regions = None
            if regions:
                templated = real
        if not regions:  # not rendered, or not whole, or instead of the content: write as JSON
            turns, regions = _inline_calls(turns), []
    if templated is None:
        templated = _apply(tokenizer, turns, tools)
    text, spans, content = _fill(templated, turns, regions, scope)
    if has_template and not _inlined(turns):
        # A template may change a content (Llama 3's ``| trim``, Qwen3 dropping earlier
        # reasoning); the model must see what the template makes of the real messages, so the
        # spans move onto that text (what the template removed no longer counts).
        try:
            real = tokenizer.apply_chat_template([t.real() for t in turns], tools=tools,
                                                 tokenize=False)
        except Exception as exc:  # noqa: BLE001 - jinja raises what the template raises
            raise DataError(f"the chat template cannot render this record: "
                            f"{type(exc).__name__}: {exc}") from exc
        if real != text:
            text, spans, content = real, _realign(text, real, spans), _realign(text, real, content)
    return text, spans, content


def _inlined(turns: list[_Turn]) -> bool:
    """Whether tools or calls were written into the text by us (the template ignores them)."""
    return any(not is_content for t in turns for _, is_content in t.parts) or \
        any(len(t.parts) > 1 for t in turns)


def _realign(text: str, real: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` of ``text`` carried onto ``real`` through the characters the two share."""
    import difflib

    out: list[tuple[int, int]] = []
    for i, j, size in difflib.SequenceMatcher(None, text, real, autojunk=False).get_matching_blocks():
        for a, b in spans:
            lo, hi = max(a, i), min(b, i + size)
            if hi > lo:
                start, end = j + lo - i, j + hi - i
                if out and out[-1][1] == start:
                    out[-1] = (out[-1][0], end)
                else:
                    out.append((start, end))
    return sorted(out)


# Counted tokens whose hidden state is fixed by the template alone: the first LEAD_TOKENS content
# tokens of an example when everything before them is template text (SPEC 0). The first one's
# state depends on nothing but its id (every example starts with the same template prefix), so
# it matches a target's fingerprint of that id at cos 1 whatever the example is about.
# bench/QUALITY.md has the measurement that chose 1.
LEAD_TOKENS = 1


def lead_mask(content: list[bool], lead: int) -> list[bool]:
    """The first ``lead`` content tokens of an example (everything before the first is template,
    so its hidden state is the template's, not the example's)."""
    out = [False] * len(content)
    seen = 0
    for i, c in enumerate(content):
        if seen >= lead:
            break
        if c:
            out[i] = True
            seen += 1
    return out


def tokenize_example(tokenizer, example: Example, *, scope: str = "all",
                     max_length: int | None = None) -> Tokenized:
    """Ids and counted mask of one example.

    Plain text and pre-tokenized rows count every non-special token (the row's own mask applied)
    in any scope. Template tokens never count, nor the example's first :data:`LEAD_TOKENS`
    content tokens (SPEC 0). A record the template or the tokenizer cannot take is a
    :class:`DataError` naming its source and line.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    where = f"{example.source}:{example.line}"
    special = set(tokenizer.all_special_ids)
    if example.tokens is not None:
        ids, given = example.tokens
        size = len(tokenizer)
        bad = next((t for t in ids if not 0 <= t < size), None)
        if bad is not None:
            raise DataError(f"{where}: token id {bad} is outside the tokenizer's vocabulary "
                            f"(size {size}); were these ids made with another tokenizer?")
        ids = list(ids)
        content = [not t for t in template_mask(ids, tokenizer, special)]
        counted = [g and c for g, c in zip(given, content)]
    elif example.messages is not None:
        try:
            text, spans, content_spans = _render(tokenizer, example.messages, scope, example.tools)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from exc
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{type(tokenizer).__name__} is a slow tokenizer: counting message "
                             "tokens needs character offsets, which only fast tokenizers give")
        enc = _encode(tokenizer, text, where, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        offsets = enc["offset_mapping"]
        counted = _overlaps(ids, offsets, spans, special)
        content = counted if spans == content_spans else _overlaps(ids, offsets, content_spans,
                                                                   special)
    else:
        ids = _encode(tokenizer, example.text, where, add_special_tokens=True)["input_ids"]
        counted = [tid not in special for tid in ids]
        content = counted
    lead = lead_mask(content, LEAD_TOKENS)
    counted = [c and not x for c, x in zip(counted, lead)]
    truncated = 0
    if max_length is not None and len(ids) > max_length:
        truncated = len(ids) - max_length
        ids, counted = ids[:max_length], counted[:max_length]
    return Tokenized(ids=list(ids), counted=counted, truncated=truncated)


def _overlaps(ids: list[int], offsets, spans: list[tuple[int, int]], special: set) -> list[bool]:
    """Tokens that are not special and whose characters overlap one of ``spans``."""
    return [tid not in special and b > a and any(a < e and b > s for s, e in spans)
            for tid, (a, b) in zip(ids, offsets)]


def _encode(tokenizer, text: str, where: str, **kwargs):
    try:
        return tokenizer(text, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the Rust tokenizer raises TypeError for bad text
        problem = f"{type(exc).__name__}: {exc}"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as enc:
            problem = (f"it holds {text[enc.start]!r}, a lone surrogate that is not valid "
                       "Unicode text")
        raise DataError(f"{where}: the tokenizer cannot take this record: {problem}") from exc


def tokenizer_digest(tokenizer) -> str:
    """A hash of the vocabulary, special tokens and chat template: banks are tied to it."""
    return tokenizer_identity(tokenizer.get_vocab(), tokenizer.all_special_tokens,
                              getattr(tokenizer, "chat_template", None))


