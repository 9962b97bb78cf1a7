"""Rendering an example to token ids and the mask of tokens that count (SPEC section 0).

Chats go through the tokenizer's chat template. To know which characters are a message's own
content (and not template text: role headers, separators, a default system prompt the template
inserts), the template is rendered once with a unique sentinel in place of each content; the real
contents are then put back where the sentinels landed, which gives their exact character spans.
Tokens whose characters overlap a counted span, and that are not special tokens, count.

Without a chat template (e.g. BERT), the documented fallback template is::

    ### User:\\n{content}\\n\\n### Assistant:\\n{content}\\n\\n   (System, User, Assistant)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from trim_fast.data.formats import DataError, Example

SCOPES = ("all", "response", "prompt")
_SENTINEL = "\u2063TRIMFAST{}\u2063"  # invisible separator: never in real text by accident


@dataclass
class Tokenized:
    """Token ids of the rendered example and which of them count (scope applied)."""

    ids: list[int]
    counted: list[bool]
    truncated: int = 0  # tokens cut by max_length


def fallback_template(messages: list[dict[str, str]]) -> str:
    return "".join(f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages)


def _role_counts(role: str, scope: str) -> bool:
    if scope == "all":
        return True
    if scope == "response":
        return role == "assistant"
    return role != "assistant"


def render_messages(tokenizer, messages: list[dict[str, str]], scope: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of the contents that count under ``scope``."""
    placeholders = [dict(m, content=_SENTINEL.format(i)) for i, m in enumerate(messages)]
    if getattr(tokenizer, "chat_template", None):
        templated = tokenizer.apply_chat_template(placeholders, tokenize=False)
    else:
        templated = fallback_template(placeholders)
    text_parts, spans, cursor = [], [], 0
    for i, m in enumerate(messages):
        marker = _SENTINEL.format(i)
        at = templated.find(marker, cursor)
        if at < 0:
            raise DataError(f"the chat template dropped or rewrote message {i} ({m['role']}); "
                            "cannot locate its content")
        text_parts.append(templated[cursor:at])
        start = sum(len(p) for p in text_parts)
        text_parts.append(m["content"])
        if _role_counts(m["role"], scope):
            spans.append((start, start + len(m["content"])))
        cursor = at + len(marker)
    text_parts.append(templated[cursor:])
    return "".join(text_parts), spans


def tokenize_example(tokenizer, example: Example, *, scope: str = "all",
                     max_length: int | None = None) -> Tokenized:
    """Ids and counted mask of one example; plain text counts every non-special token in any scope."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    special = set(tokenizer.all_special_ids)
    if example.messages is not None:
        text, spans = render_messages(tokenizer, example.messages, scope)
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{type(tokenizer).__name__} is a slow tokenizer: counting message "
                             "tokens needs character offsets, which only fast tokenizers give")
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        counted = [
            tid not in special and b > a and any(a < e and b > s for s, e in spans)
            for tid, (a, b) in zip(ids, enc["offset_mapping"])
        ]
    else:
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"]
        counted = [tid not in special for tid in ids]
    truncated = 0
    if max_length is not None and len(ids) > max_length:
        truncated = len(ids) - max_length
        ids, counted = ids[:max_length], counted[:max_length]
    return Tokenized(ids=list(ids), counted=counted, truncated=truncated)


def tokenizer_digest(tokenizer) -> str:
    """A hash of the vocabulary, special tokens and chat template: banks are tied to it."""
    h = hashlib.sha256()
    vocab = tokenizer.get_vocab()
    h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    h.update(json.dumps(sorted(tokenizer.all_special_tokens)).encode())
    h.update((getattr(tokenizer, "chat_template", None) or "").encode())
    return h.hexdigest()[:16]


tokenizer_fingerprint = tokenizer_digest
