"""Check that ``load_model(MODEL, adapter=DIR)`` (merged) equals the unmerged peft model on a
few demo examples; for the embedded GGUF SmolLM2, whose model refuses ``save_pretrained``.

    PYTHONPATH=. python bench/check_warmup_merge.py ADAPTER_DIR [--model M]

Prints the largest absolute difference of the last hidden states (merged vs unmerged) and
of unmerged vs the plain base model (the adapter's effect).
"""
import argparse
import json
import os

import torch

torch.set_num_threads(2)


def main() -> None:
    from peft import PeftModel

    from trim_fast.data import load_examples, tokenize_example
    from trim_fast.models.loading import load_model, load_tokenizer
    from trim_fast.warmup import build_training_batch, load_causal_lm, read_warmup_meta

    ap = argparse.ArgumentParser()
    ap.add_argument("adapter")
    ap.add_argument("--model", default=None)
    ap.add_argument("--pool", action="append", default=None)
    args = ap.parse_args()
    meta = read_warmup_meta(args.adapter)
    tok = load_tokenizer(args.model)
    pool = args.pool or [os.path.join(os.environ.get("WARMUP_BENCH_DIR", "/tmp/warmup_bench"), "data", f)
                         for f in ("pool_chat.jsonl", "pool_alpaca.jsonl")]
    examples = load_examples(pool)[:4]
    batch = build_training_batch([tokenize_example(tok, ex) for ex in examples], tok.pad_token_id)
    keep = batch["attention_mask"].bool()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        merged = load_model(args.model, adapter=args.adapter, device="cpu", dtype="fp32")(**inputs).last_hidden_state
        lm = load_causal_lm(args.model, torch.float32)
        plain = lm.get_decoder()(**inputs).last_hidden_state
        peft_model = PeftModel.from_pretrained(lm, args.adapter).eval()
        unmerged = peft_model.get_base_model().get_decoder()(**inputs).last_hidden_state
    print(json.dumps({
        "adapter": args.adapter, "subset_size": len(meta["subset"]["ids"]), "params": meta["params"],
        "max_abs_merged_vs_unmerged": (merged[keep] - unmerged[keep]).abs().max().item(),
        "max_abs_unmerged_vs_base": (unmerged[keep] - plain[keep]).abs().max().item(),
        "hidden_abs_max": plain[keep].abs().max().item(),
    }, indent=1))


if __name__ == "__main__":
    main()
