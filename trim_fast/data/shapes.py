"""The record shapes, registered once: :data:`SHAPES` maps each name to the fields that identify it
(detection, in order of precedence), its parser and whether it is a chat. Adding a shape is one
entry here (and its paragraph below).

The shape is detected per source from its first record (:func:`~trim_fast.data.formats.detect_format`), or forced with
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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from trim_fast.data.messages import (_chat_messages, _checked, _content_text, _optional_text,
                                     _parse_json_text, _required_text, _tool_call, _tools)
from trim_fast.errors import DataError

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "model": "assistant", "chatgpt": "assistant", "bing": "assistant",
                   "system": "system", "observation": "tool", "tool": "tool",
                   "function_call": "function_call"}


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


@dataclass(frozen=True)
class Shape:
    """A record shape: the fields that identify it, and its parser (record, ``where``) -> the
    :class:`~trim_fast.data.formats.Example` fields it sets (``messages`` and ``tools``,
    ``tokens`` or ``text``). A chat shape's records are refused when they hold media."""

    fields: tuple[str, ...]
    parse: Callable[[dict, str], dict[str, Any]]
    chat: bool = True


def _chat(to_messages: Callable[[dict, str], list]) -> Callable[[dict, str], dict[str, Any]]:
    """A chat shape's parser: its turns, then the record's ``tools``."""
    def parse(record: dict, where: str) -> dict[str, Any]:
        messages = to_messages(record, where)
        return {"messages": messages, "tools": _tools(record.get("tools"), where)}
    return parse


# In order of precedence: a record with the fields of several shapes is detected as the first
SHAPES: dict[str, Shape] = {
    "messages": Shape(("messages",), _chat(lambda r, w: _chat_messages(r.get("messages"), w,
                                                                       "messages"))),
    "sharegpt": Shape(("conversations",), _chat(_sharegpt_messages)),
    "alpaca": Shape(("instruction", "output"), _chat(_alpaca_messages)),
    "prompt_completion": Shape(("prompt", "completion"), _chat(_prompt_completion_messages)),
    "tokens": Shape(("input_ids",), lambda r, w: {"tokens": _token_rows(r, w)}, chat=False),
    "text": Shape(("text",), lambda r, w: {"text": _required_text(r, "text", w)}, chat=False),
}

# LLaMA-Factory's multimodal columns, refused in a chat shape's records
MEDIA_COLUMNS = ("images", "videos", "audios", "image", "video", "audio")  # singular too
