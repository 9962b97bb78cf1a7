"""CPU timing of attention_saliency: C++ (``backend="cpu"``) vs the materialising reference.

Shape of the brief: B=1, H=8, D=64, causal, fp32, N=2048. Run (takes a few minutes):

    python -m pytest bench/bench_attention_saliency_cpu.py --benchmark-only \
        --benchmark-columns=min,median,max,rounds --benchmark-json=/tmp/as_cpu.json

``reference_fp64`` is ``trim_fast.reference.attention_saliency`` (float64, the oracle);
``reference_fp32`` is the same materialisation in fp32 (matmul + softmax + entropy + column
sums, ``upcast=False``). ``BENCH_THREADS=1`` runs everything on one thread. Figures go to bench/results/attention_saliency_cpu.md.
"""
from __future__ import annotations

import os

import pytest
import torch

from trim_fast import reference
from trim_fast._ext import HAS_C
from trim_fast.ops.attention_saliency import attention_saliency

B, H, D, N = 1, 8, 64, 2048
ROUNDS = 3
THREADS = int(os.environ.get("BENCH_THREADS", "2"))  # the C++ kernel uses torch's thread count


@pytest.fixture(scope="module")
def qk():
    torch.set_num_threads(THREADS)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, N, D, generator=gen)
    k = torch.randn(B, H, N, D, generator=gen)
    return q, k


def _run(benchmark, fn):
    fn()  # warm-up (thread pools, first-touch)
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1)


@pytest.mark.skipif(not HAS_C, reason="trim_fast._C not built")
def test_cpp(benchmark, qk):
    q, k = qk
    _run(benchmark, lambda: attention_saliency(q, k, causal=True, backend="cpu"))


@pytest.mark.skipif(not HAS_C, reason="trim_fast._C not built")
def test_cpp_given_lse(benchmark, qk):
    q, k = qk
    lse = attention_saliency(q, k, causal=True, backend="cpu").lse
    _run(benchmark, lambda: attention_saliency(q, k, causal=True, lse=lse, backend="cpu"))


def test_torch_blockwise(benchmark, qk):
    q, k = qk
    _run(benchmark, lambda: attention_saliency(q, k, causal=True, backend="torch"))


def test_reference_fp32(benchmark, qk):
    q, k = qk
    _run(benchmark, lambda: reference.attention_saliency(q, k, causal=True, upcast=False))


def test_reference_fp64(benchmark, qk):
    q, k = qk
    _run(benchmark, lambda: reference.attention_saliency(q, k, causal=True))
