"""Record shapes -> messages -> counted tokens: every shape, tools, the hook, forced formats."""
import copy
import json

import pytest

from trim_fast.data import (DataError, Example, open_records, record_to_example, render_messages,
                            tokenize_example, tokenizer_digest)


def _one(record, **kwargs):
    return list(open_records([record], **kwargs))[0]


def _counted(tok, t):
    return tok.decode([i for i, c in zip(t.ids, t.counted) if c])


def _scopes(tok, ex):
    return {s: _counted(tok, tokenize_example(tok, ex, scope=s)) for s in ("all", "response", "prompt")}


def _rendered(tok, ex):
    return tok.decode(tokenize_example(tok, ex).ids)


# ----------------------------------------------------------------------------- OpenAI messages

def test_content_parts_are_joined(smollm_tokenizer):
    ex = _one({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Part one."},
                                     {"type": "text", "text": "Part two."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Done."}]}]})
    assert ex.messages == [{"role": "user", "content": "Part one.\nPart two."},
                           {"role": "assistant", "content": "Done."}]
    # the first content token does not count (SPEC 0, issue 18)
    assert _scopes(smollm_tokenizer, ex)["prompt"] == " one.\nPart two."


def test_non_text_part_is_an_error_not_dropped():
    rec = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "http://x/cat.png"}}]},
        {"role": "assistant", "content": "A cat."}]}
    with pytest.raises(DataError, match=r"records:1: 'content' of turn 0 of 'messages' has a "
                                        r"'image_url' part \(part 1\); only text parts"):
        _one(rec)


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
OPENAI_TOOL_CHAT = {
    "id": "t1", "tools": TOOLS, "source_url": "keep me",
    "messages": [
        {"role": "developer", "content": "Answer in one sentence."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "minus four and snowing"},
        {"role": "assistant", "content": "It is minus four and snowing in Oslo."}]}


def test_openai_tool_calls_are_normalised():
    ex = _one(OPENAI_TOOL_CHAT)
    assert ex.raw is OPENAI_TOOL_CHAT and ex.raw["source_url"] == "keep me"
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert ex.messages[2] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "id": "call_1",
         "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}
    assert ex.messages[3]["tool_call_id"] == "call_1"
    assert ex.tools == TOOLS
    # the record given is not modified by normalisation
    assert OPENAI_TOOL_CHAT["messages"][2]["content"] is None
    assert isinstance(OPENAI_TOOL_CHAT["messages"][2]["tool_calls"][0]["function"]["arguments"], str)


def test_tool_calls_without_template_support_are_json_in_the_turn(smollm_tokenizer):
    """SmolLM2's template drops tool calls and tools: they are written as JSON text."""
    tok = smollm_tokenizer
    ex = _one(OPENAI_TOOL_CHAT)
    assert "tool_calls" not in tok.apply_chat_template(ex.messages, tools=ex.tools, tokenize=False)
    call = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    text = _rendered(tok, ex)
    assert call in text and "Tools:\n" + json.dumps(TOOLS[0]) in text
    s = _scopes(tok, ex)
    assert s["response"] == call + "It is minus four and snowing in Oslo."
    # the first content token does not count (SPEC 0, issue 18)
    assert s["prompt"] == " in one sentence.Weather in Oslo?minus four and snowing"
    assert s["all"] == (" in one sentence.Weather in Oslo?" + call
                        + "minus four and snowing" + "It is minus four and snowing in Oslo.")
    assert all("get_weather\", \"description" not in v for v in s.values())  # tools never count


def test_missing_or_null_content_is_an_error():
    for turn, match in [({"role": "user", "content": None}, r"turn 0 of 'messages' \(user\) has a null 'content'"),
                        ({"role": "user"}, r"turn 0 of 'messages' \(user\) has no 'content'"),
                        ({"role": "assistant", "content": None}, r"turn 0 of 'messages' \(assistant\) has a null 'content'")]:
        with pytest.raises(DataError, match=r"records:1: " + match):
            _one({"messages": [turn, {"role": "assistant", "content": "x"}]})


def test_empty_string_is_fine_when_the_record_has_text():
    ex = _one({"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "yo"}]})
    assert ex.messages[0] == {"role": "system", "content": ""}
    with pytest.raises(DataError, match="no usable text"):
        _one({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": ""}]})


# ----------------------------------------------------------------------------- TRL

def test_trl_conversational_prompt_completion(smollm_tokenizer):
    ex = _one({"prompt": [{"role": "system", "content": "Be terse."},
                          {"role": "user", "content": "2+2?"}],
               "completion": [{"role": "assistant", "content": "4"}]})
    assert ex.format == "prompt_completion"
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant"]
    s = _scopes(smollm_tokenizer, ex)
    assert s["prompt"] == " terse.2+2?" and s["response"] == "4"


def test_standard_prompt_completion_needs_both_strings():
    ex = _one({"prompt": "p", "completion": "c"})
    assert ex.messages == [{"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}]
    with pytest.raises(DataError, match=r"records:1: field 'completion' is null"):
        _one({"prompt": "p", "completion": None})


# ----------------------------------------------------------------------------- LLaMA-Factory

LF_TOOLS = [{"name": "convert", "description": "Convert units",
             "parameters": {"type": "object", "properties": {"value": {"type": "number"},
                                                             "to": {"type": "string"}}}}]
LF_SHAREGPT = {
    "conversations": [
        {"from": "human", "value": "How many meters is 3 km?"},
        {"from": "function_call", "value": json.dumps({"name": "convert",
                                                       "arguments": {"value": 3, "to": "m"}})},
        {"from": "observation", "value": "{\"result\": 3000}"},
        {"from": "gpt", "value": "3 km is 3000 meters."}],
    "system": "You are a unit converter.",
    "tools": json.dumps(LF_TOOLS),
    "category": "units"}


def test_llama_factory_sharegpt_file(tmp_path, smollm_tokenizer):
    tok = smollm_tokenizer
    path = tmp_path / "lf.json"
    path.write_text(json.dumps([LF_SHAREGPT, dict(LF_SHAREGPT, system=None, tools="")], indent=1))
    ex, bare = list(open_records(str(path)))
    assert ex.format == "sharegpt" and ex.raw == LF_SHAREGPT
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert ex.messages[2]["tool_calls"][0]["function"] == {"name": "convert",
                                                           "arguments": {"value": 3, "to": "m"}}
    assert ex.tools == [{"type": "function", "function": LF_TOOLS[0]}]
    assert bare.tools is None and bare.messages[0]["role"] == "user"

    call = '{"name": "convert", "arguments": {"value": 3, "to": "m"}}'
    text = _rendered(tok, ex)
    for piece in ("You are a unit converter.", "How many meters is 3 km?", call,
                  '{"result": 3000}', "3 km is 3000 meters.", '"description": "Convert units"'):
        assert piece in text
    s = _scopes(tok, ex)
    assert s["response"] == call + "3 km is 3000 meters."
    assert s["prompt"] == ' are a unit converter.How many meters is 3 km?{"result": 3000}'
    assert "Convert units" not in s["all"]


def test_sharegpt_bad_turns():
    with pytest.raises(DataError, match=r"records:1: turn 1 of 'conversations' \(gpt\) has a null 'value'"):
        _one({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": None}]})
    with pytest.raises(DataError, match=r"the function_call in turn 1 of 'conversations' is not valid JSON"):
        _one({"conversations": [{"from": "human", "value": "q"},
                                {"from": "function_call", "value": "convert(3)"}]})
    with pytest.raises(DataError, match=r"'tools' is not valid JSON"):
        _one({"conversations": [{"from": "human", "value": "q"}], "tools": "[{"})


def test_sharegpt_with_role_content_keys():
    ex = _one({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    assert ex.messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


LF_ALPACA = {"instruction": "Translate to French.", "input": "Good night", "output": "Bonne nuit",
             "system": "You are a translator.",
             "history": [["Translate to French: hello", "Bonjour"],
                         ["Translate to French: thanks", "Merci"]],
             "source": "kept"}


def test_llama_factory_alpaca_file(tmp_path, smollm_tokenizer):
    tok = smollm_tokenizer
    path = tmp_path / "alpaca.jsonl"
    path.write_text(json.dumps(LF_ALPACA) + "\n")
    ex = list(open_records(str(path)))[0]
    assert ex.format == "alpaca" and ex.raw == LF_ALPACA
    assert ex.messages == [
        {"role": "system", "content": "You are a translator."},
        {"role": "user", "content": "Translate to French: hello"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Translate to French: thanks"},
        {"role": "assistant", "content": "Merci"},
        {"role": "user", "content": "Translate to French.\n\nGood night"},
        {"role": "assistant", "content": "Bonne nuit"}]
    text = _rendered(tok, ex)
    assert text.index("You are a translator.") < text.index("hello") < text.index("Merci") \
        < text.index("Good night")
    s = _scopes(tok, ex)
    assert s["response"] == "BonjourMerciBonne nuit"
    assert s["prompt"] == (" are a translator.Translate to French: hello"
                           "Translate to French: thanksTranslate to French.\n\nGood night")


@pytest.mark.parametrize("record,match", [
    ({"instruction": "i", "output": None}, r"field 'output' is null"),
    ({"instruction": None, "output": "o"}, r"field 'instruction' is null"),
    ({"instruction": "i", "output": "o", "history": [["only one"]]}, r"entry 0 of 'history'"),
    ({"instruction": "i", "output": "o", "history": "nope"}, r"'history' must be a list"),
])
def test_alpaca_bad_fields(record, match):
    with pytest.raises(DataError, match=r"records:1: " + match):
        _one(record)


# ----------------------------------------------------------------------------- pre-tokenized

def test_pre_tokenized_labels_mask_and_padding(smollm_tokenizer):
    tok = smollm_tokenizer
    ids = tok("hello world again", add_special_tokens=False)["input_ids"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    pad = 0
    row = {"input_ids": [pad, pad] + ids + [im_end, pad],
           "labels": [-100, -100, -100] + ids[1:] + [im_end, -100],
           "attention_mask": [0, 0] + [1] * (len(ids) + 1) + [0]}
    ex = _one(row)
    assert ex.format == "tokens" and ex.tokens[0] == ids + [im_end]
    t = tokenize_example(tok, ex)
    assert t.ids == ids + [im_end]
    assert t.counted == [False] + [True] * (len(ids) - 1) + [False]  # -100 and special: no
    assert tokenize_example(tok, ex, scope="response").counted == t.counted
    cut = tokenize_example(tok, ex, max_length=2)
    assert cut.ids == ids[:2] and cut.truncated == len(ids) - 1

    mask = _one({"input_ids": ids, "counted": [1, 0] + [1] * (len(ids) - 2)})
    # the first token that is not template does not count (SPEC 0): its state is its id's alone
    assert tokenize_example(tok, mask).counted == [False, False] + [True] * (len(ids) - 2)
    plain = _one({"input_ids": [im_end] + ids})
    assert tokenize_example(tok, plain).counted == [False, False] + [True] * (len(ids) - 1)


@pytest.mark.parametrize("record,match", [
    ({"input_ids": [5, 6, 7], "attention_mask": [1, 0, 1]}, r"'attention_mask' has a 0 at position 1 between ones"),
    ({"input_ids": [5, 6, 7], "labels": [5, 6]}, r"'labels' has 2 entries but 'input_ids' has 3"),
    ({"input_ids": [5, "x"]}, r"'input_ids' must be a list of integers"),
    ({"input_ids": [5, 6], "counted": [1, 2]}, r"'counted' must hold only 0 and 1"),
    ({"input_ids": [5, 6], "attention_mask": [0, 0]}, r"record has no tokens"),
    ({"input_ids": None}, r"field 'input_ids' is missing or null"),
    ({"input_ids": [5, 6], "text": "x"}, r"the record has the fields of more than one shape \(tokens, text\)"),
    ({"input_ids": [5, 6], "labels": [-1, 6]}, r"'labels' holds -1; only -100 marks"),
    ({"input_ids": [5, 6], "labels": [-100, 6], "completion_mask": [1, 1]},
     r"'labels' and 'completion_mask' disagree on which tokens count"),
    ({"input_ids": [5, 6], "assistant_masks": [0, 2]}, r"'assistant_masks' must hold only 0 and 1"),
])
def test_pre_tokenized_bad_rows(record, match):
    with pytest.raises(DataError, match=r"records:1: " + match):
        _one(record)


def test_pre_tokenized_ids_outside_the_vocabulary(smollm_tokenizer):
    ex = _one({"input_ids": [1, 10 ** 7]})
    with pytest.raises(DataError, match=r"records:1: token id 10000000 is outside the tokenizer's vocabulary"):
        tokenize_example(smollm_tokenizer, ex)


# ----------------------------------------------------------------------------- hook, forced format

def test_to_messages_hook(smollm_tokenizer):
    recs = [{"q": "Capital of Peru?", "a": "Lima."}, {"q": "Capital of Chile?", "a": "Santiago."}]

    def qa(record):
        return [{"role": "user", "content": record["q"]}, {"role": "assistant", "content": record["a"]}]

    exs = list(open_records(recs, to_messages=qa))
    assert [e.format for e in exs] == ["custom", "custom"] and exs[1].raw is recs[1]
    assert _scopes(smollm_tokenizer, exs[0])["response"] == "Lima."
    as_text = _one({"body": "just words"}, to_messages=lambda r: r["body"])
    assert as_text.text == "just words" and as_text.messages is None
    with_tools = _one({"q": "x"}, to_messages=lambda r: {"messages": qa({"q": "x", "a": "y"}),
                                                         "tools": TOOLS})
    assert with_tools.tools == TOOLS
    described = open_records(recs, to_messages=qa).describe()[0]["format"]
    assert described.startswith("custom:") and ".qa:" in described  # the hook by name and code
    assert open_records(recs, to_messages=lambda r: qa(r)).describe()[0]["format"] != described
    with pytest.raises(DataError, match=r"records:2: to_messages failed: KeyError: 'q'"):
        list(open_records([recs[0], {"other": 1}], to_messages=qa))
    with pytest.raises(DataError, match=r"records:1: to_messages returned int"):
        _one(recs[0], to_messages=lambda r: 3)


def test_forced_format(tmp_path):
    both = {"messages": [{"role": "user", "content": "chat"}], "text": "plain"}
    with pytest.raises(DataError, match=r"records:1: the record has the fields of more than one "
                                        r"shape \(messages, text\); .* --format messages"):
        _one(both)  # ambiguous: said, not guessed
    forced = _one(both, format="text")
    assert forced.format == "text" and forced.text == "plain"
    # forcing skips the per-record shape check; a record that lacks the field is named
    with pytest.raises(DataError, match=r"records:2: field 'text' is missing"):
        list(open_records([both, {"prompt": "p", "completion": "c"}], format="text"))
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"instruction": "i", "output": "o", "prompt": "p",
                                "completion": "c"}) + "\n")
    recs = open_records(str(path), format="prompt_completion")
    assert list(recs)[0].messages[0]["content"] == "p"
    assert recs.describe()[0]["format"] == "prompt_completion"


def test_null_text_field_is_an_error():
    with pytest.raises(DataError, match=r"records:1: field 'text' is null; it must be a string"):
        _one({"text": None})


def test_family_and_task_labels_go_to_meta():
    ex = _one({"text": "x", "family": "math", "task": "gsm"})
    assert ex.meta == {"family": "math", "task": "gsm"}


# ----------------------------------------------------------------------------- rendering

QWEN_LIKE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen.' }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}"
    "{%- endfor %}{{- '\\n</tools><|im_end|>\\n' }}{%- else %}{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}"
    "{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}{{- '<|im_start|>user\\n<tool_response>\\n' }}"
    "{{- message.content }}{{- '\\n</tool_response><|im_end|>\\n' }}{%- endif %}{%- endfor %}")


@pytest.fixture(scope="module")
def qwen_like(smollm_tokenizer):
    tok = copy.deepcopy(smollm_tokenizer)
    tok.chat_template = QWEN_LIKE
    return tok


def test_template_that_renders_tool_calls_and_tools(qwen_like):
    ex = _one(OPENAI_TOOL_CHAT)
    text, spans = render_messages(qwen_like, ex.messages, "response", ex.tools)
    # the same text the template gives for the real record: calls and tools through the template
    assert text == qwen_like.apply_chat_template(ex.messages, tools=ex.tools, tokenize=False)
    assert "<tools>\n" + json.dumps(TOOLS[0]) in text and "<tool_call>" in text
    pieces = [text[a:b] for a, b in spans]
    # the call's name and its arguments count; the template text around and between them not
    assert pieces[0] == "get_weather" and pieces[1].startswith("city") and "Oslo" in pieces[1]
    assert not any(t in p for p in pieces[:2] for t in ("<tool_call>", "arguments", '"name"'))
    assert pieces[2:] == ["It is minus four and snowing in Oslo."]
    s = _scopes(qwen_like, ex)
    # the first content token does not count (SPEC 0, issue 18)
    assert s["prompt"] == " in one sentence.Weather in Oslo?minus four and snowing"
    assert "Current weather" not in s["all"]  # the tool schemas never count


def test_template_that_drops_content_beside_calls_gets_json(smollm_tokenizer):
    """A template that writes only the call (not the turn's text) would lose the text: JSON instead."""
    tok = copy.deepcopy(smollm_tokenizer)
    tok.chat_template = (
        "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' }}"
        "{%- if m.tool_calls %}{%- for c in m.tool_calls %}{{- c.function.name }}"
        "{{- c.function.arguments | tojson }}{%- endfor %}{%- else %}{{- m.content }}{%- endif %}"
        "{{- '<|im_end|>\\n' }}{%- endfor %}")
    ex = _one({"messages": [{"role": "user", "content": "Convert 3 km."},
                            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                                {"type": "function", "function": {"name": "convert",
                                                                  "arguments": {"km": 3}}}]}]})
    assert _scopes(tok, ex)["response"] == 'Let me check.\n{"name": "convert", "arguments": {"km": 3}}'


def test_template_errors_name_the_record(smollm_tokenizer):
    tok = copy.deepcopy(smollm_tokenizer)
    tok.chat_template = ("{%- for m in messages %}{%- if m.role == 'tool' %}"
                         "{{ raise_exception('no tool role here') }}{%- endif %}"
                         "{{ m.content }}{%- endfor %}")
    ex = _one(OPENAI_TOOL_CHAT)
    with pytest.raises(DataError, match=r"records:1: the chat template cannot render this record: "
                                        r".*no tool role here"):
        tokenize_example(tok, ex)


def test_fallback_template_with_tools(smollm_tokenizer):
    tok = copy.deepcopy(smollm_tokenizer)
    tok.chat_template = None
    ex = _one(OPENAI_TOOL_CHAT)
    text = _rendered(tok, ex)
    assert text.startswith("### System:\nAnswer in one sentence.\n\nTools:\n")
    assert "### Tool:\nminus four and snowing" in text
    assert _scopes(tok, ex)["response"] == ('{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                                            "It is minus four and snowing in Oslo.")


def test_lone_surrogate_is_a_data_error_naming_the_record(smollm_tokenizer):
    with pytest.raises(DataError, match=r"records:1: 'content' of turn 0 of 'messages' holds '\\ud800'"):
        _one({"messages": [{"role": "user", "content": "a\ud800"}, {"role": "assistant", "content": "b"}]})
    # an Example built by hand reaches the tokenizer: still a DataError naming it
    ex = Example(id="x", source="hand.jsonl", line=7, format="text", raw={}, text="bad \ud800 text")
    with pytest.raises(DataError, match=r"hand\.jsonl:7: the tokenizer cannot take this record: .*lone surrogate"):
        tokenize_example(smollm_tokenizer, ex)
    chat = Example(id="y", source="hand.jsonl", line=8, format="messages", raw={},
                   messages=[{"role": "user", "content": "\udfff"}])
    with pytest.raises(DataError, match=r"hand\.jsonl:8: the tokenizer cannot take this record"):
        tokenize_example(smollm_tokenizer, chat)


def test_old_entry_points_still_work(smollm_tokenizer):
    ex = record_to_example({"text": "x"}, "text", source="f", line=1)
    assert ex.id == "f:1"
    assert len(tokenizer_digest(smollm_tokenizer)) == 16


def test_two_calls_in_one_turn_count_names_and_arguments_only(qwen_like):
    calls = [{"type": "function", "function": {"name": n, "arguments": json.dumps({"city": c})}}
             for n, c in (("get_weather", "Oslo"), ("get_time", "Rome"))]
    ex = _one({"messages": [{"role": "user", "content": "Oslo and Rome?"},
                            {"role": "assistant", "content": None, "tool_calls": calls}]})
    text, spans = render_messages(qwen_like, ex.messages, "response", None)
    assert text == qwen_like.apply_chat_template(ex.messages, tokenize=False)
    pieces = [text[a:b] for a, b in spans]
    assert pieces[0] == "get_weather" and pieces[2] == "get_time"
    assert "Oslo" in pieces[1] and "Rome" in pieces[3] and len(pieces) == 4
    # the template text between the two calls is the same in both places: never counted
    assert not any("tool_call>" in p for p in pieces)


@pytest.mark.parametrize("turn,match", [
    ({"role": "assistant", "content": "A", "reasoning_content": "think"}, "has 'reasoning_content'"),
    ({"role": "assistant", "content": "A", "thinking": "think"}, "has 'thinking'"),
    ({"role": "user", "content": "Q", "tool_calls": [{"type": "function", "function": {
        "name": "f", "arguments": "{}"}}]}, r"\(user\) has tool calls; only assistant turns"),
])
def test_turn_fields_that_would_be_lost_are_refused(turn, match):
    with pytest.raises(DataError, match=r"records:1: turn 1 of 'messages' .*" + match):
        _one({"messages": [{"role": "user", "content": "Q"}, turn]})


@pytest.mark.parametrize("record", [
    {"conversations": [{"from": "human", "value": "<image>What is it?"}, {"from": "gpt", "value": "A cat"}],
     "images": ["cat.jpg"]},
    {"instruction": "<video>Describe", "output": "A dog runs", "videos": ["dog.mp4"]},
])
def test_media_columns_are_refused_not_ignored(record):
    with pytest.raises(DataError, match=r"records:1: field '(images|videos)' holds media"):
        _one(record)


def test_alpaca_tools_column_reaches_the_template():
    ex = _one({"instruction": "Weather?", "output": "Sunny", "tools": json.dumps(TOOLS)})
    assert ex.tools == TOOLS


def test_trl_masks_and_boolean_masks_say_what_counts():
    ids = [5, 6, 7, 8]
    for key in ("completion_mask", "assistant_masks"):
        assert _one({"input_ids": ids, key: [0, 0, 1, 1]}).tokens == (ids, [False, False, True, True])
    assert _one({"input_ids": ids, "counted": [False, True, True, False]}).tokens == \
        (ids, [False, True, True, False])
    agree = {"input_ids": ids, "labels": [-100, -100, 7, 8], "completion_mask": [0, 0, 1, 1]}
    assert _one(agree).tokens == (ids, [False, False, True, True])


@pytest.mark.parametrize("template,kept", [
    # Llama 3 trims every content
    ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}",
     ["Hello there", "<think>plan</think> Hi!", "Bye"]),
    # Qwen3 drops the reasoning of earlier assistant turns
    ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and not loop.last %}"
     "{{ m.content.split('</think>')[-1] | trim }}{% else %}{{ m.content }}{% endif %}<|im_end|>\n"
     "{% endfor %}", ["  Hello there  ", "Hi!", "Bye"]),
])
def test_a_template_that_changes_contents_is_followed(smollm_tokenizer, template, kept):
    tok = copy.deepcopy(smollm_tokenizer)
    tok.chat_template = template
    ex = _one({"messages": [{"role": "user", "content": "  Hello there  "},
                            {"role": "assistant", "content": "<think>plan</think> Hi!"},
                            {"role": "assistant", "content": "Bye"}]})
    text, spans = render_messages(tok, ex.messages, "all")
    assert text == tok.apply_chat_template(ex.messages, tokenize=False)  # what the model sees
    assert [text[a:b] for a, b in spans] == kept


def test_openai_refusal_part_is_assistant_text():
    ex = _one({"messages": [{"role": "user", "content": "Do harm"}, {"role": "assistant", "content": [
        {"type": "refusal", "refusal": "I can't help with that."}]}]})
    assert ex.messages[1]["content"] == "I can't help with that."


def test_openai_weight_zero_turn_is_not_a_response(smollm_tokenizer):
    ex = _one({"messages": [{"role": "user", "content": "Q1"},
                            {"role": "assistant", "content": "bad answer", "weight": 0},
                            {"role": "user", "content": "Q2"},
                            {"role": "assistant", "content": "good answer", "weight": 1}]})
    text, spans = render_messages(smollm_tokenizer, ex.messages, "response")
    assert [text[a:b] for a, b in spans] == ["good answer"]
    text, spans = render_messages(smollm_tokenizer, ex.messages, "all")
    assert "bad answer" in [text[a:b] for a, b in spans]
    with pytest.raises(DataError, match="'weight' of turn 1 of 'messages' must be 0 or 1"):
        _one({"messages": [{"role": "user", "content": "Q"},
                           {"role": "assistant", "content": "A", "weight": 0.5}]})


def test_a_shape_is_one_registry_entry(monkeypatch):
    """Adding a record shape is one entry in SHAPES: detection, precedence, the unknown-shape
    message, parsing and the media check all follow it."""
    from trim_fast.data import formats, shapes

    assert formats.FORMATS == tuple(shapes.SHAPES)
    message = formats.unknown_format_message({"colour": "blue"})
    assert ("expected one of the fields 'messages', 'conversations', 'instruction'+'output', "
            "'prompt'+'completion', 'input_ids' or 'text' (or pass format= / to_messages=); "
            "got ['colour']") in message

    def qa(record, where):
        return {"messages": [{"role": "user", "content": record["question"]},
                             {"role": "assistant", "content": record["answer"]}], "tools": None}

    monkeypatch.setitem(shapes.SHAPES, "qa", shapes.Shape(("question", "answer"), qa))
    record = {"question": "Why?", "answer": "Because."}
    assert formats.detect_format(record) == "qa"
    assert formats.matching_formats(dict(record, text="t")) == ["text", "qa"]  # order = precedence
    assert "or 'question'+'answer'" in formats.unknown_format_message({"colour": "blue"})
    ex = record_to_example(record, "qa", source="s", line=1)
    assert ex.format == "qa" and [m["content"] for m in ex.messages] == ["Why?", "Because."]
    with pytest.raises(DataError, match="s:1: field 'images' holds media"):
        record_to_example(dict(record, images=["x.png"]), "qa", source="s", line=1)
