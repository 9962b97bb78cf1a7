"""SPEC section 0: formats, counted-token masks, and bad input naming file and line."""
import copy
import json

import pytest

from trim_fast.data import DataError, open_records, record_to_example, tokenize_example
from trim_fast.data.render import render_messages


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _counted_text(tok, t):
    return tok.decode([i for i, c in zip(t.ids, t.counted) if c])


@pytest.mark.parametrize("record,fmt,n_msgs", [
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "messages", 2),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, "sharegpt", 2),
    ({"instruction": "do", "input": "x", "output": "done"}, "alpaca", 2),
    ({"prompt": "p", "completion": "c"}, "prompt_completion", 2),
    ({"text": "plain words"}, "text", None),
])
def test_format_detected_per_file(tmp_path, record, fmt, n_msgs):
    path = _write(tmp_path / "f.jsonl", [record, record])
    exs = list(open_records(path))
    assert [e.format for e in exs] == [fmt, fmt]
    assert exs[1].line == 2 and exs[0].raw == record
    assert (len(exs[0].messages) if exs[0].messages else None) == n_msgs


def test_alpaca_input_joins_the_instruction():
    ex = record_to_example({"instruction": "Sum", "input": "1 2", "output": "3"}, "alpaca", source="f", line=1)
    assert ex.messages == [{"role": "user", "content": "Sum\n\n1 2"}, {"role": "assistant", "content": "3"}]


def test_parquet_is_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "p.parquet")
    pq.write_table(pa.table({"prompt": ["a", "b"], "completion": ["c", "d"]}), path)
    exs = list(open_records(path))
    assert [e.messages[1]["content"] for e in exs] == ["c", "d"]


@pytest.mark.parametrize("content,match", [
    ('{"text": "ok"}\n{"text": broken\n', r"f\.jsonl:2: malformed JSON"),
    ('{"foo": 1}\n', r"f\.jsonl:1: unknown format"),
    ('{"text": "ok"}\n{"text": "   "}\n', r"f\.jsonl:2: record has no usable text"),
    ('{"text": "ok"}\n{"prompt": "a", "completion": "b"}\n', r"f\.jsonl:2: record is not in the file's format"),
    ('{"messages": [{"role": "robot", "content": "x"}]}\n', r"f\.jsonl:1: unknown role 'robot'"),
    ("", r"f\.jsonl: empty file"),
])
def test_bad_input_names_file_and_line(tmp_path, content, match):
    path = tmp_path / "f.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        list(open_records(str(path)))


def test_unknown_file_type_and_missing_file(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown file type"):
        list(open_records(str(tmp_path / "x.csv")))
    with pytest.raises(DataError, match="no such file"):
        list(open_records(str(tmp_path / "nope.jsonl")))


def test_duplicate_ids_across_files_are_refused(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"id": "x", "text": "one"}])
    b = _write(tmp_path / "b.jsonl", [{"id": "x", "text": "two"}])
    with pytest.raises(DataError, match="duplicate id 'x'"):
        list(open_records([a, b]))


CHAT = {"messages": [{"role": "user", "content": "Convert 3 km to meters."},
                     {"role": "assistant", "content": "3 km is 3000 meters."}]}


@pytest.mark.parametrize("scope,expected", [
    # the first content token does not count (SPEC 0, issue 18)
    ("all", " 3 km to meters.3 km is 3000 meters."),
    ("response", "3 km is 3000 meters."),
    ("prompt", " 3 km to meters."),
])
def test_only_message_content_counts(smollm_tokenizer, scope, expected):
    tok = smollm_tokenizer
    t = tokenize_example(tok, record_to_example(CHAT, "messages", source="f", line=1), scope=scope)
    assert _counted_text(tok, t) == expected
    # the template's default system prompt is run through the model but never counted
    assert "helpful AI assistant" in tok.decode(t.ids)
    assert "helpful" not in _counted_text(tok, t)


def test_user_system_prompt_counts_under_prompt_scope(smollm_tokenizer):
    rec = {"messages": [{"role": "system", "content": "Be brief."}] + CHAT["messages"]}
    t = tokenize_example(smollm_tokenizer, record_to_example(rec, "messages", source="f", line=1), scope="prompt")
    # the first content token does not count (SPEC 0, issue 18)
    assert _counted_text(smollm_tokenizer, t) == " brief.Convert 3 km to meters."


def test_render_spans_are_exact_content(smollm_tokenizer):
    msgs = CHAT["messages"]
    text, spans = render_messages(smollm_tokenizer, msgs, "all")
    assert [text[s:e] for s, e in spans] == [m["content"] for m in msgs]
    assert text == smollm_tokenizer.apply_chat_template(msgs, tokenize=False)


def test_plain_text_counts_every_non_special_token(smollm_tokenizer):
    t = tokenize_example(smollm_tokenizer, record_to_example({"text": "hello there world"}, "text", source="f", line=1))
    assert smollm_tokenizer.decode(t.ids) == "hello there world"
    assert t.counted == [False, True, True]  # the first token's state is its id's alone (SPEC 0)


def test_fallback_template_without_chat_template(smollm_tokenizer):
    tok = copy.deepcopy(smollm_tokenizer)
    tok.chat_template = None
    t = tokenize_example(tok, record_to_example(CHAT, "messages", source="f", line=1), scope="response")
    assert tok.decode(t.ids).startswith("### User:\nConvert")
    assert _counted_text(tok, t) == "3 km is 3000 meters."


def test_truncation_is_counted(smollm_tokenizer):
    t = tokenize_example(smollm_tokenizer, record_to_example({"text": "word " * 50}, "text", source="f", line=1),
                         max_length=10)
    assert len(t.ids) == 10 and len(t.counted) == 10 and t.truncated > 0


def test_bad_scope(smollm_tokenizer):
    with pytest.raises(ValueError, match="scope must be one of"):
        tokenize_example(smollm_tokenizer, record_to_example(CHAT, "messages", source="f", line=1), scope="assistant")
