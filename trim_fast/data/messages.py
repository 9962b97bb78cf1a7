"""Chat turns out of records: texts checked for valid Unicode, content parts, tool calls and tool
schemas in the shape chat templates expect, OpenAI-style messages. The record shapes
(:mod:`trim_fast.data.shapes`) and the ``to_messages`` hook build on these."""
from __future__ import annotations

import json
from typing import Any

from trim_fast.errors import DataError

ROLES = ("system", "user", "assistant", "tool")
_ROLE_ALIASES = {"developer": "system", "function": "tool"}
_TEXT_PART_TYPES = ("text", "input_text", "output_text", "refusal")

# Reasoning that some chat datasets keep beside a turn's content (DeepSeek, Qwen3, gpt-oss):
# refused rather than dropped, since the sentinel rendering fills 'content' only.
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")


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
