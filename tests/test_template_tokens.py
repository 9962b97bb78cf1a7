"""Issue 18: counted tokens say something about the example. Template tokens never count, also
inside a pre-tokenized row's labelled span; the first content token (its state is the
template's) does not count; a record sharing only the first word with the targets does not
outrank the family."""
import pytest
import torch

import trim_fast.data.render as render
from trim_fast.data import record_to_example, tokenize_example
from trim_fast.data.render import lead_mask
from trim_fast.data.template import template_mask, template_runs


def chat(user, assistant, **meta):
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}], **meta}


def example(record, fmt="messages", line=1):
    return record_to_example(record, fmt, source="mem", line=line)


def llama_factory_row(tok, record):
    """As LLaMA-Factory renders a supervised row: the prompt (template, default system prompt,
    user turn, assistant header) labelled -100; the answer and the template's end-of-turn text
    after it labelled."""
    msgs = record["messages"]
    prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(msgs, tokenize=False)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
    return {"input_ids": p + r, "labels": [-100] * len(p) + r}


RECORDS = [chat("How many miles is 3 km?", "3 km is 1.86 miles.\nRounded: 1.9"),
           chat("What does HTTP 404 mean?\n\nShort answer please.", "Not Found.")]


def test_template_runs_come_from_the_tokenizer(smollm_tokenizer):
    tok = smollm_tokenizer
    runs = template_runs(tok)
    special = set(tok.all_special_ids)
    assert runs and all(special.intersection(r) for r in runs)
    # the end of an assistant turn as the template writes it is one of them
    probe = tok.apply_chat_template([{"role": "user", "content": "a"},
                                     {"role": "assistant", "content": "b"}], tokenize=False)
    tail = tok(probe[probe.rindex("b") + 1:], add_special_tokens=False)["input_ids"]
    assert tuple(tail) in runs
    # the default system prompt the template inserts is template text too
    assert any(len(r) > 10 for r in runs)


@pytest.mark.parametrize("record", RECORDS)
def test_llama_factory_rows_count_what_chat_records_count(smollm_tokenizer, record):
    tok = smollm_tokenizer
    row = llama_factory_row(tok, record)
    as_row = tokenize_example(tok, example(row, "tokens"))
    as_chat = tokenize_example(tok, example(record), scope="response")
    assert as_row.ids == as_chat.ids
    labelled = [x != -100 for x in row["labels"]]
    assert sum(labelled) > sum(as_row.counted) >= 2  # the labelled end-of-turn text is dropped
    assert as_row.counted == as_chat.counted
    # every token of the row (scope 'all' of the plug-in drops the labels) counts as a chat
    # record's message contents do under scope 'all'
    unlabelled = tokenize_example(tok, example({"input_ids": row["input_ids"]}, "tokens"))
    assert unlabelled.counted == tokenize_example(tok, example(record)).counted


def test_a_newline_inside_content_still_counts(smollm_tokenizer):
    tok = smollm_tokenizer
    row = llama_factory_row(tok, RECORDS[0])
    t = tokenize_example(tok, example(row, "tokens"))
    newline = tok("\n", add_special_tokens=False)["input_ids"][0]
    pieces = [(i, c) for i, c in zip(t.ids, t.counted)]
    inside = [c for i, c in pieces[:-3] if i == newline and c]
    assert inside, "the newline of the answer's own text must count"
    assert not any(c for i, c in pieces[-2:])  # <|im_end|> and the template's newline after it
    assert template_mask(t.ids, tok)[-2:] == [True, True]


def test_first_content_token_does_not_count(smollm_tokenizer):
    tok = smollm_tokenizer
    t = tokenize_example(tok, example(RECORDS[0]))
    first = next(i for i, tid in enumerate(t.ids) if tok.decode([tid]) == "How")
    assert not t.counted[first] and t.counted[first + 1]
    # the assistant turn's first token sees the user's words: it counts
    answer = next(i for i in range(first, len(t.ids)) if tok.decode([t.ids[i]]) == "3")
    assert t.counted[answer]
    # plain text: the first token after BOS (none here) is the lead
    text = tokenize_example(tok, example({"text": "How are you"}, "text"))
    assert text.counted == [False] + [True] * (len(text.ids) - 1)
    assert lead_mask([False, True, False, True], 1) == [False, True, False, False]
    assert lead_mask([False, True, True, True], 2) == [False, True, True, False]


def test_first_word_alone_does_not_outrank_the_family(tiny_model_dir):
    """A record that shares only its first word with the targets: with that token counted, its
    state is the template's (cos 1 to the targets' fingerprint of it) and it ranked first; now
    it does not outrank a family member, in either method."""
    from trim_fast import Selector
    from trim_fast.config import SelectionConfig

    targets = [chat(f"Convert {n} km to miles.", f"{n} km is {n * 0.62:.2f} miles.")
               for n in (3, 7, 12, 40)]
    family = [chat(f"Please convert {n} km to miles.", f"That is {n * 0.62:.2f} miles.")
              for n in (5, 9, 21, 33)]
    impostor = chat("Convert this SQL query into a join: SELECT a FROM t WHERE b IN (SELECT b FROM u)",
                    "SELECT a FROM t JOIN u USING (b)")
    others = [chat(f"Write a haiku about {w}.", f"{w.capitalize()} rests; quiet lake.")
              for w in ("rain", "snow", "dusk", "tea")]
    pool = [impostor] + family + others

    def scores(method):
        selector = Selector(tiny_model_dir, config=SelectionConfig(method=method))
        return selector.score(pool, selector.fingerprint(targets, pool=pool))

    for method in ("matched", "paper"):
        s = scores(method).score[0]
        assert bool((s[0] < s[1:5]).all()), (method, s.tolist())
    old = render.LEAD_TOKENS
    render.LEAD_TOKENS = 0  # the rule off: the first word decides (the bug this guards)
    try:
        before = scores("matched")
    finally:
        render.LEAD_TOKENS = old
    assert before.max[0, 0].item() == pytest.approx(1.0, abs=1e-5)
    assert int(before.score[0].argmax()) == 0
