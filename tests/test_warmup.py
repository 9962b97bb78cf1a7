"""LoRA warmup (SPEC 5) on tiny random causal LMs with the real SmolLM2 tokenizer."""
import json
import os
import random

import pytest
import torch

from trim_fast.data import record_to_example, tokenize_example
from trim_fast.demo.generate import FAMILIES, make_example
from trim_fast.models.tiny import tiny_config
from trim_fast.config import WarmupConfig
from trim_fast.warmup import (
    WARMUP_META,
    WarmupResult,
    build_training_batch,
    forward_loss,
    loss_sum,
    run_warmup,
    warmup_subset,
)

FAST = dict(fraction=0.5, r=4, alpha=8, dropout=0.1, lr=1e-2, epochs=2, effective_batch=4,
            micro_batch=2, max_length=96)


def chat_examples(n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q, a = make_example(FAMILIES[i % len(FAMILIES)], rng)
        rec = {"id": f"ex-{i}", "messages": [{"role": "user", "content": q},
                                            {"role": "assistant", "content": a}]}
        out.append(record_to_example(rec, "messages", source="mem.jsonl", line=i + 1))
    return out


def tiny_lm(family="llama", seed=0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family), attn_implementation="sdpa")


def base_weights(model):
    """Every non-LoRA parameter/buffer, keyed by its name in the plain model."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in model.state_dict().items()
            if "lora_" not in k}


@pytest.fixture(scope="module")
def examples():
    return chat_examples(12)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, smollm_tokenizer, examples):
    """One short warmup of a tiny llama: (result, model after training, base weights before)."""
    model = tiny_lm()
    before = base_weights(model)
    out = str(tmp_path_factory.mktemp("adapter"))
    result = run_warmup(model, examples, smollm_tokenizer, WarmupConfig(**FAST), out, progress=False)
    return result, model, before


# --- subset ------------------------------------------------------------------------------------

def test_subset_is_seeded_sorted_and_sized():
    a = warmup_subset(1000, 0.05, seed=3)
    assert a == warmup_subset(1000, 0.05, seed=3)
    assert a != warmup_subset(1000, 0.05, seed=4)
    assert len(a) == 50 and len(set(a)) == 50 and a == sorted(a) and 0 <= a[0] and a[-1] < 1000
    assert warmup_subset(7, 1.0, seed=0) == list(range(7))
    assert len(warmup_subset(10, 0.01, seed=0)) == 1  # round half up, at least one


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_fraction_outside_unit_interval_is_refused(fraction):
    with pytest.raises(ValueError, match="fraction"):
        warmup_subset(100, fraction, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        WarmupConfig(fraction=fraction)


def test_empty_pool_is_refused(smollm_tokenizer):
    with pytest.raises(ValueError, match="empty"):
        warmup_subset(0, 0.05, seed=0)
    with pytest.raises(ValueError, match="empty"):
        run_warmup(None, [], smollm_tokenizer, WarmupConfig(**FAST), "/nonexistent", progress=False)


def test_subset_without_response_tokens_is_refused(smollm_tokenizer, tmp_path):
    prompts_only = [record_to_example({"id": f"p{i}", "messages": [{"role": "user", "content": f"hello {i}"}]},
                                      "messages", source="mem.jsonl", line=i + 1) for i in range(4)]
    with pytest.raises(ValueError, match="no response token"):
        run_warmup(tiny_lm(), prompts_only, smollm_tokenizer, WarmupConfig(**FAST), str(tmp_path),
                   progress=False)
    assert not os.listdir(tmp_path)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="r=0"):
        WarmupConfig(r=0)
    with pytest.raises(ValueError, match="dropout"):
        WarmupConfig(dropout=1.0)


# --- labels -------------------------------------------------------------------------------------

def test_labels_are_exactly_the_response_tokens(smollm_tokenizer, examples):
    items = [tokenize_example(smollm_tokenizer, ex, scope="response") for ex in examples[:4]]
    batch = build_training_batch(items, smollm_tokenizer.pad_token_id)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape
    for b, (item, ex) in enumerate(zip(items, examples)):
        n = len(item.ids)
        counted = torch.tensor(item.counted)
        assert torch.equal(labels[b, :n][counted], ids[b, :n][counted])
        assert (labels[b, :n][~counted] == -100).all()
        assert (labels[b, n:] == -100).all() and (mask[b, n:] == 0).all() and (mask[b, :n] == 1).all()
        # the labelled tokens spell the answer, and nothing of the prompt
        answer = ex.messages[-1]["content"]
        labelled = smollm_tokenizer.decode(labels[b][labels[b] != -100].tolist())
        assert labelled.strip() == answer.strip()
        assert ex.messages[0]["content"] not in smollm_tokenizer.decode(labels[b][labels[b] != -100].tolist())
        assert (labels[b] != -100).sum() < mask[b].sum()  # the chat template and prompt carry no loss


def test_loss_sum_ignores_masked_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, 3, -100, 4, -100], [-100, -100, -100, -100, 7]])
    total, count = loss_sum(logits, labels)
    # position t predicts token t+1
    expect = sum(-torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]]
                 for b in range(2) for t in range(1, 5) if labels[b, t] != -100)
    assert count == 3
    torch.testing.assert_close(total, expect)
    # changing the logits of positions that predict a masked label changes nothing
    logits2 = logits.clone()
    logits2[0, 1] += 5.0
    logits2[1, :3] -= 2.0
    torch.testing.assert_close(loss_sum(logits2, labels)[0], total)


def test_logits_only_where_loss_is_equals_full_logits(smollm_tokenizer, examples):
    model = tiny_lm().eval()
    items = [tokenize_example(smollm_tokenizer, ex, scope="response") for ex in examples[:3]]
    batch = build_training_batch(items, smollm_tokenizer.pad_token_id)
    with torch.no_grad():
        kept, n_kept = forward_loss(model, batch, keep_logits=True)
        full, n_full = forward_loss(model, batch, keep_logits=False)
    assert n_kept == n_full == sum(sum(t.counted[1:]) for t in items) > 0
    torch.testing.assert_close(kept, full, rtol=1e-5, atol=1e-4)


# --- training ----------------------------------------------------------------------------------

def test_only_lora_weights_change(trained):
    result, model, before = trained
    after = base_weights(model)
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), f"base weight {k} changed"
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.requires_grad for p in lora_b)
    assert any(p.abs().max() > 0 for p in lora_b)  # lora_B starts at zero: training moved it
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_result_and_metadata(trained, examples):
    result, _, _ = trained
    cfg = WarmupConfig(**FAST)
    subset = warmup_subset(len(examples), cfg.fraction, cfg.seed)
    assert result.subset_indices == subset
    assert result.subset_ids == [examples[i].id for i in subset]
    steps = cfg.epochs * -(-len(subset) // cfg.effective_batch)
    assert len(result.losses) == steps and all(v == v and v > 0 for v in result.losses)
    files = set(os.listdir(result.adapter_dir))
    assert {"adapter_config.json", "adapter_model.safetensors", WARMUP_META} <= files
    meta = json.load(open(os.path.join(result.adapter_dir, WARMUP_META)))
    assert meta["subset"]["ids"] == result.subset_ids
    assert meta["params"]["r"] == FAST["r"] and meta["params"]["lr"] == FAST["lr"]
    assert meta["params"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert meta["losses"] == result.losses


def test_loss_goes_down_with_a_real_learning_rate(smollm_tokenizer, examples, tmp_path):
    cfg = WarmupConfig(**dict(FAST, fraction=0.25, epochs=4, effective_batch=3, micro_batch=3, lr=3e-2,
                              dropout=0.0, warmup_ratio=0.0))
    result = run_warmup(tiny_lm(), examples, smollm_tokenizer, cfg, str(tmp_path), progress=False)
    assert result.losses[-1] < result.losses[0]


def test_gradient_checkpointing_gives_the_same_losses(smollm_tokenizer, examples, tmp_path):
    cfg = dict(FAST, epochs=1)
    plain = run_warmup(tiny_lm(), examples, smollm_tokenizer, WarmupConfig(**cfg), str(tmp_path / "a"),
                       progress=False)
    ckpt = run_warmup(tiny_lm(), examples, smollm_tokenizer,
                      WarmupConfig(**cfg, gradient_checkpointing=True), str(tmp_path / "b"), progress=False)
    assert plain.losses == pytest.approx(ckpt.losses, rel=1e-5)


# --- saved adapter -------------------------------------------------------------------------------

def test_adapter_reloads_with_plain_peft_and_merges(trained, smollm_tokenizer, examples):
    from peft import PeftModel

    result, model, _ = trained
    ids = build_training_batch([tokenize_example(smollm_tokenizer, ex) for ex in examples[:3]],
                               smollm_tokenizer.pad_token_id)
    base = tiny_lm()  # same seed: the same base weights as the trained model had
    with torch.no_grad():
        base_logits = base(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
    peft_model = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    trained_lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    reloaded_lora = {n.removeprefix("base_model.model."): p for n, p in peft_model.named_parameters()
                     if "lora_" in n}
    assert trained_lora.keys() == reloaded_lora.keys()
    for n in trained_lora:
        assert torch.equal(trained_lora[n].detach(), reloaded_lora[n].detach())
    with torch.no_grad():
        unmerged = peft_model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
        merged_model = peft_model.merge_and_unload()
        merged = merged_model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
    assert not torch.allclose(unmerged, base_logits, atol=1e-4)  # the adapter does something
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)


def test_cli_warmup_then_load_model_merges(tmp_path, smollm_tokenizer, examples):
    """``trim-fast warmup --model DIR`` then ``load_model(DIR, adapter=...)``: the merged base
    model's hidden states equal the unmerged peft model's."""
    from peft import PeftModel

    from trim_fast.models.loading import load_model

    model_dir = str(tmp_path / "model")
    tiny_lm(seed=1).save_pretrained(model_dir)
    smollm_tokenizer.save_pretrained(model_dir)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(ex.raw) + "\n" for ex in examples))
    adapter = str(tmp_path / "adapter")
    from trim_fast.cli import main

    assert main(["warmup", "--model", model_dir, "--pool", str(pool), "--out", adapter, "--fraction",
                 "0.5", "--lora-r", "4", "--lora-alpha", "8", "--lr", "1e-2", "--batch-size", "4",
                 "--micro-batch", "3", "--epochs", "1", "--max-length", "96", "--device", "cpu",
                 "--no-progress"]) == 0
    meta = json.load(open(os.path.join(adapter, WARMUP_META)))
    assert meta["params"]["epochs"] == 1 and meta["params"]["r"] == 4 and len(meta["subset"]["ids"]) == 6

    batch = build_training_batch([tokenize_example(smollm_tokenizer, ex) for ex in examples[:3]],
                                 smollm_tokenizer.pad_token_id)
    merged = load_model(model_dir, adapter=adapter, device="cpu", dtype="fp32")
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():
        plain = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        unmerged_model = PeftModel.from_pretrained(lm, adapter).eval()
        unmerged = unmerged_model.get_base_model().model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        got = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    keep = batch["attention_mask"].bool()
    assert not torch.allclose(unmerged[keep], plain[keep], atol=1e-4)
    torch.testing.assert_close(got[keep], unmerged[keep], rtol=1e-4, atol=1e-4)


# --- bad models and flags ------------------------------------------------------------------------

def test_model_without_target_modules_names_class_and_modules(smollm_tokenizer, examples, tmp_path):
    from transformers import BertLMHeadModel

    bert = BertLMHeadModel(tiny_config("bert"))
    with pytest.raises(ValueError, match=r"BertLMHeadModel.*q_proj, k_proj, v_proj, o_proj.*query"):
        run_warmup(bert, examples, smollm_tokenizer, WarmupConfig(**FAST), str(tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"LlamaForCausalLM.*gate_projj"):
        run_warmup(tiny_lm(), examples, smollm_tokenizer,
                   WarmupConfig(**dict(FAST, target_modules=("q_proj", "gate_projj"))), str(tmp_path),
                   progress=False)


def test_model_without_lm_head_is_refused(smollm_tokenizer, examples, tmp_path):
    from trim_fast.models.tiny import tiny_model

    with pytest.raises(ValueError, match="LlamaModel has no LM head"):
        run_warmup(tiny_model("llama"), examples, smollm_tokenizer, WarmupConfig(**FAST), str(tmp_path),
                   progress=False)


def test_select_flags_do_not_clash_and_warmup_switch(tmp_path, monkeypatch):
    from trim_fast import cli

    parser = cli.build_parser()  # select carries the warmup flags, prefixed where they clash
    args = parser.parse_args(["select", "--pool", "p.jsonl", "--out", str(tmp_path), "--warmup",
                              "--warmup-fraction", "0.1", "--lora-r", "8", "--warmup-lr", "1e-4",
                              "--warmup-ratio", "0.1", "--warmup-gradient-checkpointing"])
    values = cli._values(args)
    assert values["warmup"] and values["warmup_fraction"] == 0.1 and "fraction" not in values
    cfg = cli.build_settings(WarmupConfig, values, prefix="warmup_", prefixed=cli.WARMUP_PREFIXED)
    assert cfg == WarmupConfig(fraction=0.1, r=8, lr=1e-4, warmup_ratio=0.1, gradient_checkpointing=True)
    calls = {}

    def fake_run(name, examples, tok, wcfg, out_dir, **kw):
        calls.update(out=out_dir, fraction=wcfg.fraction)
        return WarmupResult(out_dir, ["a"], [1.0], 0.1)

    monkeypatch.setattr("trim_fast.warmup.run_warmup", fake_run)
    monkeypatch.setattr("trim_fast.models.loading.load_tokenizer", lambda name=None: None)
    from trim_fast.run.pipeline import ensure_warmup_adapter

    assert ensure_warmup_adapter(values.get("model"), [], cli._warmup_settings(values),
                                 str(tmp_path)).adapter_dir == calls["out"]
    assert calls == {"out": os.path.join(str(tmp_path), "warmup_adapter"), "fraction": 0.1}
    values = cli._values(parser.parse_args(["select", "--pool", "p.jsonl", "--out", str(tmp_path),
                                            "--warmup", "--warmup-fraction", "2"]))
    with pytest.raises(ValueError, match="fraction=2.0"):
        cli._warmup_settings(values)
    values = cli._values(parser.parse_args(["select", "--pool", "p.jsonl", "--out", str(tmp_path),
                                            "--warmup", "--adapter", "x"]))
    with pytest.raises(ValueError, match="--warmup and --adapter"):
        cli._warmup_settings(values)
