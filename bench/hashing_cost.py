"""The cost of content hashing (issue 15), side by side with reading and with scoring.

A resumable run recognises its chunks by content: while streaming the pool, the scorer takes
every record's digest (``Example.digest()``: for a JSONL line, blake2b of its bytes, taken as the
line is read; for other sources, a canonical walk of the record), one digest per chunk
(``scoring.engine.chunk_digest``), one for the whole pool, and, for the copy warning, a digest of
each record without its id (``Example.content_digest()``). This script measures, on one pool:

- ``read``: streaming the records (``open_records``: JSON parsing, record shapes, id checks)
  with the line digest switched off, nothing else: reading without hashing;
- ``read + hashing``: the same pass as the scorer's first pass makes it (line digests,
  ``chunk_digest`` per chunk of ``--chunk-size``, ``content_digest`` per record, the pool
  digest), with each part timed on its own;
- ``value_digest(raw)``: what ``Example.digest()`` costs for sources that are not JSONL (Parquet,
  datasets, in-memory records), where it walks the record instead of hashing a line;
- scoring: on the demo pool, the real thing (``Selector.score`` with the model given, default
  the embedded SmolLM2, on this machine's CPU); on the synthetic pool, an **estimate**: tokens
  per record measured on a sample with the model's tokenizer, times the pool size, divided by
  the forward tokens/s measured on the demo pool (and the sample's tokenisation time scaled).

Usage (repository root; one measurement at a time on a shared machine)::

    PYTHONPATH=. python bench/hashing_cost.py --demo                       # demo pool, 1,000
    PYTHONPATH=. python bench/hashing_cost.py --synthetic 1000000 --scoring-from demo.json
    PYTHONPATH=. python bench/hashing_cost.py --demo --model PATH          # another model

``--json FILE`` writes the figures; ``--scoring-from`` reads the demo run's forward tokens/s
(and tokenizer) to estimate the synthetic pool's scoring time without running it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time

import torch


def _timed_pass(paths, *, hashing: bool, chunk_size: int, value_digests: bool = False) -> dict:
    """One streaming pass over ``paths`` as the scorer's first pass makes it (without the
    tokenizer), with or without the hashing; each hashing part timed on its own."""
    import trim_fast.data.sources as sources
    from trim_fast.data import open_records
    from trim_fast.digests import value_digest
    from trim_fast.scoring.engine import _Copies, chunk_digest, iter_chunks

    line_digest = sources.line_digest
    if not hashing:
        sources.line_digest = lambda body: None  # the reader takes it as it reads each line
    try:
        records = open_records(paths)
        copies = _Copies()
        digests: list[str] = []
        parts = {"chunk_digest": 0.0, "content_digest": 0.0, "value_digest": 0.0}
        n = 0
        t0 = time.perf_counter()
        for _c, _start, examples in iter_chunks(records, chunk_size):
            n += len(examples)
            if hashing:
                a = time.perf_counter()
                digests.append(chunk_digest(examples))
                b = time.perf_counter()
                copies.add(examples)
                parts["chunk_digest"] += b - a
                parts["content_digest"] += time.perf_counter() - b
            if value_digests:
                a = time.perf_counter()
                for ex in examples:
                    value_digest(ex.raw)
                parts["value_digest"] += time.perf_counter() - a
        if hashing:
            a = time.perf_counter()
            hashlib.blake2b("".join(digests).encode(), digest_size=16).hexdigest()
            parts["chunk_digest"] += time.perf_counter() - a
        total = time.perf_counter() - t0 - parts["value_digest"]
    finally:
        sources.line_digest = line_digest
    out = {"records": n, "seconds": total, **{k: v for k, v in parts.items() if v}}
    if hashing:
        seen = copies.seen
        out["copies_table_bytes"] = (sys.getsizeof(seen) + sum(sys.getsizeof(k) + sys.getsizeof(v)
                                                               for k, v in seen.items()))
    return out


def _line_digest_only(paths) -> tuple[float, float]:
    """(seconds to read the lines as bytes, seconds to blake2b them as the reader does)."""
    from trim_fast.digests import jsonl_line_digest as line_digest

    read = digest = 0.0
    for path in paths:
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            lines = [raw.rstrip(b"\r\n") for raw in f]
        t1 = time.perf_counter()
        for body in lines:
            if body.strip():
                line_digest(body)
        digest += time.perf_counter() - t1
        read += t1 - t0
        del lines
    return read, digest


def measure_hashing(paths, *, chunk_size: int, repeats: int) -> dict:
    """Best of ``repeats`` for each pass, the passes alternating within each round, after one
    untimed warm-up pass (imports, page cache)."""
    _timed_pass(paths, hashing=True, chunk_size=chunk_size)
    plain, hashed, valued, lines = [], [], [], []
    for _ in range(repeats):
        plain.append(_timed_pass(paths, hashing=False, chunk_size=chunk_size))
        hashed.append(_timed_pass(paths, hashing=True, chunk_size=chunk_size))
        valued.append(_timed_pass(paths, hashing=False, chunk_size=chunk_size, value_digests=True))
        lines.append(_line_digest_only(paths))
    best = lambda runs, key: min(r[key] for r in runs)  # noqa: E731
    h = min(hashed, key=lambda r: r["seconds"])
    return {
        "records": plain[0]["records"],
        "bytes": sum(os.path.getsize(p) for p in paths),
        "read_s": best(plain, "seconds"),
        "read_and_hashing_s": h["seconds"],
        "chunk_digest_s": min(r["chunk_digest"] for r in hashed),
        "content_digest_s": min(r["content_digest"] for r in hashed),
        "line_digest_s": min(x[1] for x in lines),
        "raw_line_read_s": min(x[0] for x in lines),
        "value_digest_s": best(valued, "value_digest"),
        "copies_table_bytes": h["copies_table_bytes"],
        "rounds": repeats,
    }


def measure_scoring(paths, targets, model, *, chunk_size: int) -> dict:
    from trim_fast import SelectionConfig, Selector

    cfg = SelectionConfig(chunk_size=chunk_size)
    t0 = time.perf_counter()
    sel = Selector(model, config=cfg, device="cpu")
    load_s = time.perf_counter() - t0
    banks = sel.fingerprint({"arithmetic": targets})
    from trim_fast.data import open_records

    sel.score(open_records(paths).take(range(32)), banks)  # warm-up: kernels, allocator
    t0 = time.perf_counter()
    scores = sel.score(paths, banks)
    wall = time.perf_counter() - t0
    return {"model": sel.model_name, "load_s": load_s, "score_wall_s": wall,
            "forward_s": scores.seconds_forward, "tokens": scores.tokens,
            "forward_tokens_per_s": scores.tokens / max(scores.seconds_forward, 1e-9),
            "threads": torch.get_num_threads()}


def sample_tokens(path, model, n: int) -> dict:
    """Tokens per record (the model's chat template included) and tokenisation time per record,
    on the first ``n`` records of ``path``."""
    import itertools

    from trim_fast.data import open_records, tokenize_example
    from trim_fast.models.loading import load_tokenizer

    tok = load_tokenizer(model)
    sample = list(itertools.islice(iter(open_records(path)), n))
    t0 = time.perf_counter()
    lengths = [len(tokenize_example(tok, ex, scope="all", max_length=2048).ids) for ex in sample]
    seconds = time.perf_counter() - t0
    return {"sample": len(sample), "tokens_per_record": statistics.fmean(lengths),
            "tokenize_s_per_record": seconds / len(sample)}


def synthetic_pool(path: str, n: int, seed: int = 0) -> str:
    """``n`` short chat records without ids, one per line, compact JSON (~80 bytes each)."""
    if os.path.exists(path) and sum(1 for _ in open(path, "rb")) == n:
        return path
    rng = random.Random(seed)
    ops = [("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b)]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(n):
            a, b = rng.randrange(100), rng.randrange(100)
            sym, fn = ops[i % 3]
            f.write(json.dumps({"messages": [{"role": "user", "content": f"{a}{sym}{b} #{i}"},
                                             {"role": "assistant", "content": str(fn(a, b))}]},
                               separators=(",", ":")) + "\n")
    os.replace(tmp, path)
    return path


def report(name: str, h: dict, scoring: dict | None, estimate: dict | None) -> str:
    n = h["records"]
    hashing = h["line_digest_s"] + h["chunk_digest_s"] + h["content_digest_s"]
    resume = h["line_digest_s"] + h["chunk_digest_s"]
    rows = [
        ("read (open_records, line digest off)", h["read_s"]),
        ("read + hashing, as the scorer's pass 1", h["read_and_hashing_s"]),
        ("  line digests (`Example.digest()` of JSONL; blake2b of each line)", h["line_digest_s"]),
        ("  `chunk_digest` per chunk + the pool digest", h["chunk_digest_s"]),
        ("  `content_digest` per record (copy check)", h["content_digest_s"]),
        ("  **hashing, the three above**", hashing),
        ("`value_digest(raw)`: `Example.digest()` of non-JSONL sources", h["value_digest_s"]),
    ]
    lines = [f"### {name}: {n:,} records, {h['bytes'] / 1e6:.1f} MB "
             f"({h['bytes'] / n:.0f} bytes/record)", "",
             "| step | seconds | µs/record |", "|---|---:|---:|"]
    lines += [f"| {label} | {s:.3f} | {s / n * 1e6:.2f} |" for label, s in rows]
    if scoring:
        lines.append(f"| scoring, measured: `Selector.score` wall ({scoring['model']}, CPU, "
                     f"{scoring['threads']} threads) | {scoring['score_wall_s']:.1f} | "
                     f"{scoring['score_wall_s'] / n * 1e6:,.0f} |")
        lines.append(f"| of which forward + match ({scoring['tokens']:,} tokens, "
                     f"{scoring['forward_tokens_per_s']:,.0f} tokens/s) | {scoring['forward_s']:.1f} | "
                     f"{scoring['forward_s'] / n * 1e6:,.0f} |")
    if estimate:
        lines.append(f"| scoring, **estimated** (not run): {estimate['tokens_per_record']:.1f} "
                     f"tokens/record x {n:,} / {estimate['forward_tokens_per_s']:,.0f} tokens/s, "
                     f"+ tokenisation | {estimate['scoring_s']:,.0f} | "
                     f"{estimate['scoring_s'] / n * 1e6:,.0f} |")
    total = (scoring or {}).get("score_wall_s") or (estimate or {}).get("scoring_s")
    share = (lambda x: f" = {100 * x / total:.3g}% of the scoring time") if total else (lambda x: "")
    lines += ["", f"Hashing: {hashing:.3f} s ({hashing / n * 1e6:.2f} µs/record){share(hashing)}; "
              f"of it, the digests resume needs (line + chunk): {resume:.3f} s{share(resume)}. "
              f"Cross-check, the two passes' difference: "
              f"{h['read_and_hashing_s'] - h['read_s']:.3f} s. The copy check's table holds "
              f"{h['copies_table_bytes'] / 1e6:.1f} MB ({h['copies_table_bytes'] / n:.0f} "
              f"bytes/record).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", action="store_true", help="the demo pool (trim_fast.demo.generate)")
    ap.add_argument("--pool-size", type=int, default=1000, help="demo pool size")
    ap.add_argument("--synthetic", type=int, default=0, help="records of a synthetic chat pool")
    ap.add_argument("--synthetic-path", default=os.path.join(tempfile.gettempdir(),
                                                             "trim_fast_hashing_{n}.jsonl"))
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--no-scoring", action="store_true")
    ap.add_argument("--scoring-from", help="JSON of a --demo run: its forward tokens/s estimate "
                    "the synthetic pool's scoring time")
    ap.add_argument("--sample", type=int, default=2000, help="records tokenised for the estimate")
    ap.add_argument("--chunk-size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    if args.demo:
        from trim_fast.demo.generate import generate

        d = tempfile.mkdtemp(prefix="trim_fast_hashing_demo_")
        manifest = generate(d, pool_size=args.pool_size, targets_per_family=8, seed=0)
        paths = manifest["pool"]
        h = measure_hashing(paths, chunk_size=args.chunk_size, repeats=args.repeats)
        s = None if args.no_scoring else measure_scoring(paths, manifest["targets"]["arithmetic"],
                                                         args.model, chunk_size=args.chunk_size)
        results["demo"] = {"hashing": h, "scoring": s}
        print(report(f"demo pool ({args.pool_size:,})", h, s, None), flush=True)
    if args.synthetic:
        path = synthetic_pool(args.synthetic_path.format(n=args.synthetic), args.synthetic)
        h = measure_hashing([path], chunk_size=args.chunk_size, repeats=args.repeats)
        estimate = None
        source = results.get("demo", {}).get("scoring")
        if source is None and args.scoring_from:
            with open(args.scoring_from) as f:
                source = json.load(f)["demo"]["scoring"]
        if source is not None:
            model = args.model if args.model is not None else None
            est = sample_tokens(path, model, args.sample)
            n = h["records"]
            forward = est["tokens_per_record"] * n / source["forward_tokens_per_s"]
            est.update(forward_tokens_per_s=source["forward_tokens_per_s"],
                       forward_s=forward, tokenize_s=est["tokenize_s_per_record"] * n,
                       scoring_s=forward + est["tokenize_s_per_record"] * n)
            estimate = est
        results["synthetic"] = {"hashing": h, "estimate": estimate, "path": path}
        print(report(f"synthetic pool ({path})", h, None, estimate), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
