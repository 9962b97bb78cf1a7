"""Record shapes: one record (a dict) becomes one :class:`Example`.

The shape is detected per source from its first record (:func:`detect_format`), or forced with
``format=``; every later record of the source must have the same shape. Shapes and how they map
to chat turns (``render`` counts assistant turns under scope ``response``, every other turn under
``prompt``):

``messages``
    OpenAI / HF chat: ``messages`` = list of ``{role, content}``. Roles ``system``,
    ``developer`` (rendered as ``system``: chat templates do not know it), ``user``,
    ``assistant``, ``tool`` (and OpenAI's legacy ``function``, read as ``tool``). ``content``
    is a string or a list of parts; ``{"type": "text", "text": ...}`` parts are joined with
    ``"\\n"`` (as vLLM does for text-only models); any other part (an image, audio, a file) is
    a :class:`DataError`, never dropped. Assistant ``tool_calls`` (OpenAI shape, or legacy
    ``function_call``) are kept; such a turn may have a null ``content``. A record-level
    ``tools`` list goes to the chat template.
``sharegpt``
    ``conversations`` = list of ``{from, value}`` (or ``{role, content}``), with LLaMA-Factory's
    speakers: ``human``/``user``, ``gpt``/``assistant``, ``system``, ``function_call`` (an
    assistant turn whose value is the JSON of one call ``{"name", "arguments"}`` or a list of
    them) and ``observation``/``tool`` (a tool result). Optional columns ``system`` (a first
    system turn) and ``tools`` (a list, or a JSON string of one).
``alpaca``
    ``instruction`` + optional ``input`` (joined by a blank line) is the user turn, ``output`` the
    assistant turn; LLaMA-Factory's optional ``system`` (a first system turn) and ``history``
    (``[[user, assistant], ...]``, earlier turns put before the instruction).
``prompt_completion``
    ``prompt`` and ``completion``: strings (a user and an assistant turn), or TRL's
    conversational form where each is a list of messages (kept with their own roles); optional
    ``tools``.
``tokens``
    Pre-tokenized rows: ``input_ids`` with ``labels`` (``-100`` = does not count), or a 0/1
    mask (``counted``, TRL's ``completion_mask`` / ``assistant_masks``), or neither (every token
    counts); masks given together must agree. An ``attention_mask`` whose
    zeros are padding at either end is stripped; a zero between ones is an error. Special tokens
    never count (``render`` applies that, it needs the tokenizer).
``text``
    Plain ``text``: every non-special token counts, whatever the scope.

A frontend with its own record shape passes ``to_messages=callable(record)`` returning a list of
messages (the ``messages`` shape above), a plain string (a text record), or a dict
``{"messages": [...], "tools": [...]}``; those examples have format ``custom``.

Nothing the shape knows is dropped, and the record itself is kept untouched in
:attr:`Example.raw` (unknown fields included), so the selection is written back as given. A
missing or null field that the shape needs is a :class:`DataError` naming source, line and
field; an empty string is fine as long as the record has some text somewhere.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from trim_fast.digests import value_digest
from trim_fast.errors import DataError

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "tokens", "text")
CUSTOM_FORMAT = "custom"  # records mapped by a to_messages hook
ROLES = ("system", "user", "assistant", "tool")
_ROLE_ALIASES = {"developer": "system", "function": "tool"}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "model": "assistant", "chatgpt": "assistant", "bing": "assistant",
                   "system": "system", "observation": "tool", "tool": "tool",
                   "function_call": "function_call"}
_TEXT_PART_TYPES = ("text", "input_text", "output_text", "refusal")

ToMessages = Callable[[dict], Any]


# DataError lives in trim_fast.errors (the package's error hierarchy); re-exported here


@dataclass
class Example:
    """One record: its id, where it came from, its normalised content and the raw record.

    Exactly one of ``messages`` (chat turns: ``role`` in :data:`ROLES`, ``content`` a string,
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

_SHAPE_FIELDS = (("messages", ("messages",)), ("sharegpt", ("conversations",)),
                 ("alpaca", ("instruction", "output")), ("prompt_completion", ("prompt", "completion")),
                 ("tokens", ("input_ids",)), ("text", ("text",)))


def matching_formats(record: dict[str, Any]) -> list[str]:
    """Every shape whose fields the record has, in order of precedence."""
    return [name for name, fields in _SHAPE_FIELDS if all(f in record for f in fields)]


def detect_format(record: dict[str, Any]) -> str | None:
    """The record's shape from its fields (the first by precedence), or ``None``."""
    shapes = matching_formats(record)
    return shapes[0] if shapes else None


def unknown_format_message(record: dict[str, Any]) -> str:
    return ("unknown format (record shape): expected one of the fields 'messages', "
            "'conversations', 'instruction'+'output', 'prompt'+'completion', 'input_ids' or 'text' "
            f"(or pass format= / to_messages=); got {sorted(map(str, record))[:8]}")


# ----------------------------------------------------------------------------- helpers

def _checked(text: str, where: str, what: str) -> str:
    """``text`` if it is valid Unicode; a lone surrogate (valid JSON: "\\ud800") is not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"{where}: {what} holds {text[exc.start]!r} at character {exc.start}, a "
                        "lone surrogate that is not valid Unicode text (no tokenizer can take "
                        "it; fix the record)") from None
    return text


def _required_text(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if value is None:
        raise DataError(f"{where}: field '{key}' is "
                        f"{'null' if key in record else 'missing'}; it must be a string")
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    return _checked(value, where, f"field '{key}'")


def _optional_text(record: dict, key: str, where: str) -> str:
    if record.get(key) is None:
        return ""
    return _required_text(record, key, where)


def _content_text(value: Any, where: str, what: str) -> str:
    """A message content: a string, or a list of text parts joined with newlines."""
    if isinstance(value, str):
        return _checked(value, where, what)
    if isinstance(value, (list, tuple)):
        texts = []
        for p_i, part in enumerate(value):
            if isinstance(part, str):
                texts.append(part)
                continue
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind not in _TEXT_PART_TYPES and not (kind is None and isinstance(part, dict)
                                                    and "text" in part):
                raise DataError(f"{where}: {what} has a {kind!r} part (part {p_i}); only text "
                                "parts are supported (trim_fast scores text models)")
            field_name = "refusal" if kind == "refusal" else "text"  # a refusal is assistant text
            text = part.get(field_name)
            if not isinstance(text, str):
                raise DataError(f"{where}: {kind or 'text'} part {p_i} of {what} needs a string "
                                f"{field_name!r} field")
            texts.append(text)
        return _checked("\n".join(texts), where, what)
    raise DataError(f"{where}: {what} must be a string or a list of text parts, "
                    f"got {type(value).__name__}")


def _parse_json_text(value: str, where: str, what: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: {what} is not valid JSON ({exc.msg} at column "
                        f"{exc.colno})") from None


def _tool_call(call: Any, where: str, what: str) -> dict[str, Any]:
    """One call in the shape chat templates expect: {type, function: {name, arguments}}.

    ``arguments`` given as a JSON string of an object is parsed (templates expect a dict and
    serialise it themselves); any other string stays a string.
    """
    if not isinstance(call, dict):
        raise DataError(f"{where}: {what} must be an object, got {type(call).__name__}")
    fn = call.get("function") if isinstance(call.get("function"), dict) else call
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: {what} needs a non-empty string 'name'")
    args = fn.get("arguments", fn.get("parameters"))
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            args = parsed
    elif args is None:
        args = {}
    out: dict[str, Any] = {"type": "function", "function": {"name": _checked(name, where, what),
                                                            "arguments": args}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    _checked(json.dumps(args, ensure_ascii=False, default=str), where, f"arguments of {what}")
    return out


def _tools(value: Any, where: str, key: str = "tools") -> list[dict[str, Any]] | None:
    """Tool schemas as chat templates expect them: {"type": "function", "function": {...}}."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        value = _parse_json_text(value, where, f"'{key}'")
        if value is None or value == []:
            return None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: '{key}' must be a list of tool schemas (or a JSON string of "
                        f"one), got {type(value).__name__}")
    out = []
    for t_i, tool in enumerate(value):
        if isinstance(tool, str):
            tool = _parse_json_text(tool, where, f"tool {t_i} of '{key}'")
        if not isinstance(tool, dict):
            raise DataError(f"{where}: tool {t_i} of '{key}' must be an object")
        if "function" not in tool and "name" in tool:  # a bare schema (LLaMA-Factory): wrap it
            tool = {"type": "function", "function": tool}
        out.append(tool)
    return out


def _chat_messages(turns: Any, where: str, key: str) -> list[dict[str, Any]]:
    """OpenAI-style messages -> normalised turns."""
    if not isinstance(turns, (list, tuple)):
        raise DataError(f"{where}: '{key}' must be a list of turns, got {type(turns).__name__}")
    messages = []
    for t_i, turn in enumerate(turns):
        what = f"turn {t_i} of '{key}'"
        if not isinstance(turn, dict) or turn.get("role") is None:
            raise DataError(f"{where}: {what} needs a 'role' field")
        role = str(turn["role"])
        role = _ROLE_ALIASES.get(role, role)
        if role not in ROLES:
            raise DataError(f"{where}: unknown role {turn['role']!r} in {what} (expected "
                            "system, developer, user, assistant or tool)")
        hidden = [k for k in REASONING_FIELDS if turn.get(k)]
        if hidden:
            raise DataError(f"{where}: {what} ({role}) has {hidden[0]!r}, which is not rendered "
                            "as counted text; put it into 'content' (a to_messages hook can) or "
                            "remove it, so that nothing is scored silently without it")
        if role != "assistant" and (turn.get("tool_calls") or turn.get("function_call")):
            raise DataError(f"{where}: {what} ({role}) has tool calls; only assistant turns make "
                            "tool calls")
        calls = []
        if role == "assistant":
            raw_calls = turn.get("tool_calls")
            if raw_calls is not None and not isinstance(raw_calls, (list, tuple)):
                raise DataError(f"{where}: 'tool_calls' of {what} must be a list")
            calls = [_tool_call(c, where, f"tool call {c_i} of {what}")
                     for c_i, c in enumerate(raw_calls or [])]
            if turn.get("function_call") is not None:  # OpenAI's legacy single call
                calls.append(_tool_call(turn["function_call"], where, f"function_call of {what}"))
        content = turn.get("content")
        if content is None and not calls:
            raise DataError(f"{where}: {what} ({role}) has "
                            f"{'a null' if 'content' in turn else 'no'} 'content'")
        msg: dict[str, Any] = {"role": role,
                               "content": "" if content is None else
                               _content_text(content, where, f"'content' of {what}")}
        if calls:
            msg["tool_calls"] = calls
        for k in ("tool_call_id", "name"):  # a tool result's call id; a participant's name
            if isinstance(turn.get(k), str):
                msg[k] = turn[k]
        if role == "assistant" and turn.get("weight") is not None:  # OpenAI fine-tuning files
            if turn["weight"] not in (0, 1) or isinstance(turn["weight"], bool):
                raise DataError(f"{where}: 'weight' of {what} must be 0 or 1, got {turn['weight']!r}")
            msg["weight"] = int(turn["weight"])
        messages.append(msg)
    return messages


def _sharegpt_messages(record: dict, where: str) -> list[dict[str, Any]]:
    turns = record.get("conversations")
    if not isinstance(turns, (list, tuple)):
        raise DataError(f"{where}: 'conversations' must be a list of turns")
    messages = []
    system = _optional_text(record, "system", where)
    if system:
        messages.append({"role": "system", "content": system})
    for t_i, turn in enumerate(turns):
        what = f"turn {t_i} of 'conversations'"
        if not isinstance(turn, dict):
            raise DataError(f"{where}: {what} must be an object")
        role_key, text_key = ("from", "value") if "from" in turn or "role" not in turn \
            else ("role", "content")
        if turn.get(role_key) is None:
            raise DataError(f"{where}: {what} needs a '{role_key}' field")
        speaker = str(turn[role_key])
        if speaker not in _SHAREGPT_ROLES:
            raise DataError(f"{where}: unknown ShareGPT speaker {speaker!r} in {what} (expected "
                            f"one of {', '.join(sorted(_SHAREGPT_ROLES))})")
        value = turn.get(text_key)
        if value is None:
            raise DataError(f"{where}: {what} ({speaker}) has "
                            f"{'a null' if text_key in turn else 'no'} '{text_key}'")
        if speaker == "function_call":
            if not isinstance(value, str):
                raise DataError(f"{where}: '{text_key}' of {what} must be a JSON string")
            calls = _parse_json_text(value, where, f"the function_call in {what}")
            calls = calls if isinstance(calls, list) else [calls]
            messages.append({"role": "assistant", "content": "", "tool_calls": [
                _tool_call(c, where, f"call {c_i} of {what}") for c_i, c in enumerate(calls)]})
        else:
            messages.append({"role": _SHAREGPT_ROLES[speaker],
                             "content": _content_text(value, where, f"'{text_key}' of {what}")})
    return messages


def _alpaca_messages(record: dict, where: str) -> list[dict[str, Any]]:
    messages = []
    system = _optional_text(record, "system", where)
    if system:
        messages.append({"role": "system", "content": system})
    history = record.get("history")
    if history is not None:
        if not isinstance(history, (list, tuple)):
            raise DataError(f"{where}: 'history' must be a list of [user, assistant] pairs")
        for h_i, pair in enumerate(history):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2 or \
                    not all(isinstance(x, str) for x in pair):
                raise DataError(f"{where}: entry {h_i} of 'history' must be a pair of strings "
                                "[user, assistant]")
            messages.append({"role": "user", "content": _checked(pair[0], where, f"history {h_i}")})
            messages.append({"role": "assistant",
                             "content": _checked(pair[1], where, f"history {h_i}")})
    instruction = _required_text(record, "instruction", where)
    inp = _optional_text(record, "input", where)
    messages.append({"role": "user",
                     "content": instruction if not inp.strip() else f"{instruction}\n\n{inp}"})
    messages.append({"role": "assistant", "content": _required_text(record, "output", where)})
    return messages


def _prompt_completion_messages(record: dict, where: str) -> list[dict[str, Any]]:
    messages = []
    for key, role in (("prompt", "user"), ("completion", "assistant")):
        value = record.get(key)
        if isinstance(value, (list, tuple)):  # TRL conversational
            messages += _chat_messages(value, where, key)
        else:
            messages.append({"role": role, "content": _required_text(record, key, where)})
    return messages


MEDIA_COLUMNS = ("images", "videos", "audios", "image", "video", "audio")  # singular too

# Reasoning that some chat datasets keep beside a turn's content (DeepSeek, Qwen3, gpt-oss):
# refused rather than dropped, since the sentinel rendering fills 'content' only.
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")

# Fields of a pre-tokenized row that say which tokens count: labels (-100: not counted, as
# transformers and LLaMA-Factory write them), a 0/1 mask of ours, TRL's completion and
# assistant masks.
TOKEN_MASKS = ("labels", "counted", "completion_mask", "assistant_masks")


def _int_list(value: Any, where: str, key: str, *, bools: bool = False) -> list[int]:
    if hasattr(value, "tolist"):  # numpy / arrow arrays
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(x, int) and (bools or not isinstance(x, bool)) for x in value):
        raise DataError(f"{where}: '{key}' must be a list of integers"
                        + (" or booleans" if bools else ""))
    return [int(x) for x in value]


def _token_rows(record: dict, where: str) -> tuple[list[int], list[bool]]:
    if record.get("input_ids") is None:
        raise DataError(f"{where}: field 'input_ids' is missing or null")
    ids = _int_list(record["input_ids"], where, "input_ids")
    masks = {}  # every field that says which tokens count; they must agree
    for key in TOKEN_MASKS:
        if record.get(key) is None:
            continue
        if key == "labels":
            labels = _int_list(record[key], where, key)
            bad = next((x for x in labels if x < 0 and x != -100), None)
            if bad is not None:
                raise DataError(f"{where}: 'labels' holds {bad}; only -100 marks a token that "
                                "does not count (the ignore index of transformers and LLaMA-Factory)")
            masks[key] = [x != -100 for x in labels]
        else:
            mask = _int_list(record[key], where, key, bools=True)
            if any(x not in (0, 1) for x in mask):
                raise DataError(f"{where}: '{key}' must hold only 0 and 1")
            masks[key] = [x == 1 for x in mask]
        if len(masks[key]) != len(ids):
            raise DataError(f"{where}: '{key}' has {len(masks[key])} entries but 'input_ids' has "
                            f"{len(ids)}")
    if len({tuple(m) for m in masks.values()}) > 1:
        raise DataError(f"{where}: {' and '.join(map(repr, masks))} disagree on which tokens count; "
                        "give one of them")
    counted = next(iter(masks.values())) if masks else [True] * len(ids)
    if record.get("attention_mask") is not None:
        att = _int_list(record["attention_mask"], where, "attention_mask")
        if len(att) != len(ids):
            raise DataError(f"{where}: 'attention_mask' has {len(att)} entries but 'input_ids' "
                            f"has {len(ids)}")
        ones = [i for i, a in enumerate(att) if a]
        if any(a not in (0, 1) for a in att):
            raise DataError(f"{where}: 'attention_mask' must hold only 0 and 1")
        if ones:
            lo, hi = ones[0], ones[-1] + 1
            if hi - lo != len(ones):
                gap = next(i for i in range(lo, hi) if not att[i])
                raise DataError(f"{where}: 'attention_mask' has a 0 at position {gap} between "
                                "ones; only padding at either end can be stripped")
            ids, counted = ids[lo:hi], counted[lo:hi]
        else:
            ids, counted = [], []
    if not ids:
        raise DataError(f"{where}: record has no tokens")
    return ids, counted


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
    elif format == "messages":
        ex.messages = _chat_messages(record.get("messages"), where, "messages")
        ex.tools = _tools(record.get("tools"), where)
    elif format == "sharegpt":
        ex.messages = _sharegpt_messages(record, where)
        ex.tools = _tools(record.get("tools"), where)
    elif format == "alpaca":
        ex.messages = _alpaca_messages(record, where)
        ex.tools = _tools(record.get("tools"), where)
    elif format == "prompt_completion":
        ex.messages = _prompt_completion_messages(record, where)
        ex.tools = _tools(record.get("tools"), where)
    elif format == "tokens":
        ex.tokens = _token_rows(record, where)
    elif format == "text":
        ex.text = _required_text(record, "text", where)
    else:
        raise DataError(f"{where}: unknown format {format!r}; known: {', '.join(FORMATS)}")
    if format in ("messages", "sharegpt", "alpaca", "prompt_completion") and to_messages is None:
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
