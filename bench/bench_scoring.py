"""Benchmark: token matching + pooling (SPEC 3) of 10^6 candidate tokens, d=2048, a bank of
5,000 classes, against the per-token Python reference.

The fast paths stream the tokens in chunks of ``--chunk-tokens`` (one hidden-state chunk,
generated once and reused with fresh token ids each pass, so generating data is not timed and
memory stays bounded). The reference is per-token Python: it is timed on ``--ref-tokens`` tokens
and extrapolated linearly to the full count (stated in the output).

    python bench/bench_scoring.py                       # defaults below, 2 threads
    python bench/bench_scoring.py --tokens 100000       # quicker
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from trim_fast import reference
from trim_fast._ext import HAS_C
from trim_fast.bank import FingerprintBank
from trim_fast.ops.nearest import NearestIndex
from trim_fast.ops.token_match import match_and_pool


def make_bank(classes: int, d: int, vocab: int, seed: int) -> FingerprintBank:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(vocab, generator=g)[:classes].sort().values
    vectors = torch.nn.functional.normalize(torch.randn(classes, d, generator=g), dim=-1)
    return FingerprintBank(ids, vectors, torch.ones(classes, dtype=torch.long),
                           torch.ones(classes), {"bench": True})


def token_ids_for(bank, shape, matched_fraction, vocab, g):
    """Ids of which ``matched_fraction`` have a fingerprint, the rest not."""
    in_bank = bank.classes[torch.randint(0, bank.num_classes, shape, generator=g)]
    table = bank.row_of_token(vocab)
    unseen = (table < 0).nonzero().squeeze(1)
    out_bank = unseen[torch.randint(0, unseen.numel(), shape, generator=g)]
    pick = torch.rand(shape, generator=g) < matched_fraction
    return torch.where(pick, in_bank, out_bank)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=2048)
    p.add_argument("--classes", type=int, default=5000)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--seq", type=int, default=1024, help="tokens per example")
    p.add_argument("--chunk-tokens", type=int, default=16384)
    p.add_argument("--matched", type=float, default=0.8, help="fraction of tokens with a fingerprint")
    p.add_argument("--ref-tokens", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backends", default="cpu,torch", help="on cuda: triton,torch")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    dev = torch.device(args.device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        pass

    g = torch.Generator().manual_seed(0)
    bank = make_bank(args.classes, args.d, args.vocab, 1)
    b = max(1, args.chunk_tokens // args.seq)
    chunk = b * args.seq
    passes = -(-args.tokens // chunk)
    hidden = torch.randn(b, args.seq, args.d, generator=g)
    counted = torch.ones(b, args.seq, dtype=torch.bool)
    ids = [token_ids_for(bank, (b, args.seq), args.matched, args.vocab, g) for _ in range(passes)]
    idf = torch.rand(args.vocab, generator=g) + 1
    hidden, counted, idf, bank = hidden.to(dev), counted.to(dev), idf.to(dev), bank.to(dev)
    ids = [x.to(dev) for x in ids]
    total = passes * chunk
    print(f"# {platform.node()}: {os.cpu_count()} CPUs visible, {args.threads} threads, "
          f"torch {torch.__version__}, C++ extension: {HAS_C}")
    print(f"# {total} tokens = {passes} passes x {b} examples x {args.seq} tokens, d={args.d}, "
          f"bank {args.classes} classes, {args.matched:.0%} of tokens matched")

    results = {}
    runs = [("zero", be) for be in args.backends.split(",")] + [("nearest", args.backends.split(",")[0])]
    for fallback, backend in runs:
        if True:
            t = bank.tables(hidden.device)  # table + index built once, outside the timing
            kw = dict(idf=idf, fallback=fallback, backend=backend, nearest=t.nearest)
            match_and_pool(hidden[:1], ids[0][:1], counted[:1], t.vectors, t.row_table, **kw)
            sync()
            t0 = time.perf_counter()
            for i in range(passes):
                match_and_pool(hidden, ids[i], counted, t.vectors, t.row_table, **kw)
            sync()
            dt = time.perf_counter() - t0
            results[(fallback, backend)] = dt
            print(f"match_and_pool fallback={fallback:8s} backend={backend:6s}: {dt:8.2f} s "
                  f"for {total} tokens ({total / dt / 1e6:.2f} M tokens/s)")

    # The nearest-fingerprint search alone, faiss IndexFlatIP vs torch matmul, on the
    # unmatched share of one chunk.
    unmatched = int(round(chunk * (1 - args.matched)))
    q = torch.nn.functional.normalize(hidden.reshape(-1, args.d)[:unmatched], dim=-1)
    exact_rows = None
    if dev.type == "cuda":  # exact torch matmul + top-1 on the GPU; faiss-gpu only where built
        from trim_fast.ops.nearest import faiss_has_gpu

        searches = [("torch", "exact")] + ([("faiss-gpu", "exact")] if faiss_has_gpu() else [])
    else:
        searches = [("faiss-cpu", "exact"), ("torch", "exact"), ("faiss-cpu", "ivf")]
    for name, kind in searches:
        t0 = time.perf_counter()
        index = NearestIndex(bank.vectors, backend=name, kind=kind, nprobe=8)
        build = time.perf_counter() - t0
        index.search(q[:16])  # warm-up (CUDA context, kernels)
        sync()
        t0 = time.perf_counter()
        _, rows = index.search(q)
        sync()
        dt = time.perf_counter() - t0
        exact_rows = rows if exact_rows is None else exact_rows
        recall = float((rows == exact_rows).float().mean())
        print(f"nearest search {name:9s} {kind:5s}: {dt:6.3f} s for {unmatched} queries "
              f"({unmatched / dt:,.0f} queries/s; index built in {build:.2f} s; "
              f"same nearest row as faiss exact: {recall:.1%})")

    # Reference: per-token Python, one example at a time, on a subsample.
    bank, hidden, idf, ids = bank.to("cpu"), hidden.cpu(), idf.cpu(), [x.cpu() for x in ids[:1]]
    fp = bank
    ref_b = max(1, args.ref_tokens // args.seq)
    ref_tokens = ref_b * args.seq
    t0 = time.perf_counter()
    for i in range(ref_b):
        ex_ids = ids[0][i]
        ts = reference.token_scores(hidden[i], ex_ids, fp, fallback="nearest")
        reference.example_score(ts, idf[ex_ids])
    dt_ref = time.perf_counter() - t0
    est = dt_ref / ref_tokens * total
    print(f"reference (fallback=nearest): {dt_ref:.2f} s for {ref_tokens} tokens, extrapolated "
          f"linearly to {total} tokens: {est:,.0f} s ({est / 3600:.1f} h)")
    for (fallback, backend), dt in results.items():
        if fallback == "nearest":
            print(f"speed-up of {backend} over the reference (nearest): {est / dt:,.0f}x")
    print(f"# device: {dev}")


if __name__ == "__main__":
    main()
