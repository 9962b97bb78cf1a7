"""Test helpers: the naive twins behind the shapes the fast entries take, so each test compares
one fast path with the oracle in a line."""
import torch

from trim_fast.ops.attention_saliency.naive import attention_saliency_varlen_naive
from trim_fast.ops.token_match import match_and_pool
from trim_fast.ops.token_match.naive import match_and_pool_reference
from trim_fast.types import PooledScores


def kernel_device(backend: str) -> torch.device:
    """Where a backend's kernel runs in the tests: Triton on CUDA where there is one (the CPU
    interpreter else), everything else on the CPU."""
    return torch.device("cuda" if backend == "triton" and torch.cuda.is_available() else "cpu")


def fast_match(hidden, ids, counted, bank, *, index_backend="auto", **kw) -> PooledScores:
    """``match_and_pool`` against a :class:`FingerprintBank`, as the scoring engine calls it; CPU
    inputs of the Triton backend run on CUDA where there is one, results back on the CPU."""
    dev = kernel_device(kw.get("backend", "auto"))
    if hidden.device.type != "cpu" or dev.type == "cpu":
        dev = hidden.device
    moved = dev != hidden.device
    if moved:
        hidden, ids, counted = hidden.to(dev), ids.to(dev), counted.to(dev)
        if kw.get("idf") is not None:
            kw["idf"] = kw["idf"].to(dev)
    t = bank.tables(hidden.device, index_backend=index_backend)
    got = match_and_pool(hidden, ids, counted, t.vectors, t.row_table, nearest=t.nearest, **kw)
    if moved:
        got = PooledScores(*(getattr(got, f).cpu() for f in PooledScores.__dataclass_fields__))
    return got


def naive_match(hidden, ids, counted, bank, *, idf=None, fallback="nearest", fallback_penalty=0.9,
                w_mean=0.5, w_max=0.5, w_coverage=0.05) -> PooledScores:
    """The oracle (float64, token by token) as :class:`PooledScores`."""
    out, _, _ = match_and_pool_reference(hidden, ids, counted, bank, idf=idf, fallback=fallback,
                                         fallback_penalty=fallback_penalty, w_mean=w_mean,
                                         w_max=w_max, w_coverage=w_coverage)
    return PooledScores(*(torch.tensor(out[k], dtype=torch.float32 if k not in ("n_scored", "n_matched")
                                       else torch.long)
                          for k in ("score", "mean", "max", "coverage", "n_scored", "n_matched")))


def naive_stats_fn(q, k, cu_seqlens, *, max_seqlen, causal, scale, window, lse, backend):
    """A capture ``stats_fn`` that runs the materialising oracle per packed sequence, so capture
    tests see the capture's own plumbing, not a kernel's rounding."""
    return attention_saliency_varlen_naive(q, k, cu_seqlens, causal=causal, scale=scale,
                                           window=window)
