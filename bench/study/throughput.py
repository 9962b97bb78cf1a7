"""Pool-scoring cost of the study's candidates against the bare full forward, side by side on the
same length-sorted token-budget batches (fp32, CPU, 2 threads by default):

B  bare full forward (``encode_last_hidden``)                            the reference, 1.00x
A  the shipped scoring path, paper scoring (``pool.score_chunk``: forward + match/pool with the
   nearest-fingerprint fallback and IDF)
P  the proposed default: full forward + ``proposed.score_batch`` (centred, matched tokens only)
P20 forward stopped after layer 20 of 30 + ``proposed.score_batch`` on layer-20 states
S  the statistics pre-pass: forward of the seeded 5% sample and its mean state (reported as a
   share of B; a production scorer can keep the sample's states and score them, so the sample is
   never forwarded twice)

    python bench/study/throughput.py [--examples 160] [--repeats 2]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@contextlib.contextmanager
def stop_after(model, layers: int):
    """Run only the first ``layers`` decoder layers and skip the final norm (the states are the
    raw layer-``layers`` output, as the study's cache holds them)."""
    base = model.base_model if hasattr(model, "base_model") else model
    old_n, old_norm = base.config.num_hidden_layers, base.norm
    base.config.num_hidden_layers = layers
    base.norm = torch.nn.Identity()
    try:
        yield
    finally:
        base.config.num_hidden_layers = old_n
        base.norm = old_norm


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import proposed
    from cache import load_sets

    from trim_fast.capture import capture_saliency, encode_last_hidden, token_budget_batches
    from trim_fast.fingerprints import FingerprintBank
    from trim_fast.models.loading import load_model, load_tokenizer
    from trim_fast.pipeline import SelectionConfig
    from trim_fast.pool import TokenChunk, pad_batch, score_chunk

    _, examples, targets = load_sets("hard", 0)
    pool = [examples[i] for i in sorted(random.Random(0).sample(range(len(examples)), args.examples))]
    tok = load_tokenizer()
    model = load_model(device="cpu", dtype="fp32")
    chunk = TokenChunk.from_examples(tok, pool, "all", 2048)
    tchunk = TokenChunk.from_examples(tok, targets["http_code"], "all", 2048)
    pad_id, vocab = tok.pad_token_id, len(tok)
    cfg = SelectionConfig(max_tokens=args.max_tokens)
    batches = token_budget_batches(chunk.lengths(), cfg.max_tokens)
    n_tokens = int(chunk.ids.numel())

    t_ids, t_mask, t_cnt = pad_batch([tchunk.example(i) for i in range(len(tchunk))], pad_id, "cpu")
    cap = capture_saliency(model, t_ids, t_mask)
    paper_bank = FingerprintBank.build(cap.hidden[t_cnt].float(), t_ids[t_cnt], cap.alpha[t_cnt])
    idf = chunk.document_frequency(vocab)
    idf = torch.log((1 + len(chunk)) / (1 + idf.double())).float() + 1

    # the statistics pre-pass on a seeded 5% sample, at the last layer and at layer 20
    sample = sorted(random.Random(0).sample(range(len(chunk)), max(1, round(0.05 * len(chunk)))))

    def prepass(layer=None):
        tot, cnt = 0, 0
        for s in range(0, len(sample), 16):
            b_ids, b_mask, b_cnt = pad_batch([chunk.example(i) for i in sample[s:s + 16]], pad_id, "cpu")
            with (stop_after(model, layer) if layer else contextlib.nullcontext()):
                h = encode_last_hidden(model, b_ids, b_mask)
            a, c = proposed.mean_state(h, b_cnt)
            tot, cnt = tot + a, cnt + c
        return (tot / cnt).float()

    mu = prepass()
    mu20 = prepass(20)
    with stop_after(model, 20):
        h20 = encode_last_hidden(model, t_ids, t_mask)
    bank = proposed.build_bank(cap.hidden[t_cnt].float(), t_ids[t_cnt], cap.alpha[t_cnt], mu, vocab)
    bank20 = proposed.build_bank(h20[t_cnt].float(), t_ids[t_cnt], cap.alpha[t_cnt], mu20, vocab)

    def path_b():
        for batch in batches:
            b_ids, b_mask, _ = pad_batch([chunk.example(i) for i in batch], pad_id, "cpu")
            encode_last_hidden(model, b_ids, b_mask)

    def path_a():
        score_chunk(model, chunk, {"t": paper_bank}, cfg, idf, pad_id)

    def path_p():
        for batch in batches:
            b_ids, b_mask, b_cnt = pad_batch([chunk.example(i) for i in batch], pad_id, "cpu")
            proposed.score_batch(encode_last_hidden(model, b_ids, b_mask), b_ids, b_cnt, bank, mu)

    def path_p20():
        with stop_after(model, 20):
            for batch in batches:
                b_ids, b_mask, b_cnt = pad_batch([chunk.example(i) for i in batch], pad_id, "cpu")
                proposed.score_batch(encode_last_hidden(model, b_ids, b_mask), b_ids, b_cnt, bank20, mu20)

    def path_s():
        prepass()

    timings = {}
    with torch.inference_mode():
        for name, fn in (("B_bare_full_forward", path_b), ("A_paper_scoring_shipped", path_a),
                         ("P_proposed_full", path_p), ("P20_proposed_stop_at_20", path_p20),
                         ("S_stats_prepass_5pct", path_s)):
            fn()
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            timings[name] = best
            print(f"{name}: {best:.2f}s", flush=True)
    b = timings["B_bare_full_forward"]
    res = {"examples": len(chunk), "tokens": n_tokens, "batches": len(batches), "threads": args.threads,
           "seconds": timings, "tokens_per_s": {k: n_tokens / v for k, v in timings.items()},
           "throughput_vs_bare_forward": {k: b / v for k, v in timings.items()},
           "prepass_share_of_bare": timings["S_stats_prepass_5pct"] / b}
    print("| path | seconds | tokens/s | throughput vs B |\n|---|---|---|---|")
    for k, v in timings.items():
        print(f"| {k} | {v:.2f} | {n_tokens / v:.0f} | {b / v:.2f}x |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
