"""Which kernel runs where, shared by every op: ``auto`` is Triton on CUDA (torch where Triton is
not installed), the C++ extension on the CPU (torch where it is not built)."""
from __future__ import annotations

import importlib.util
import os

import torch

from trim_fast._ext import HAS_C

BACKENDS = ("auto", "triton", "cpu", "torch")


def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            return "triton" if has_triton() else "torch"
        return "cpu" if HAS_C and device.type == "cpu" else "torch"
    if backend == "triton":
        if not has_triton():
            raise RuntimeError("backend='triton' needs the triton package; use backend='torch'")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU)")
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, got {device}")
        if not HAS_C:
            raise RuntimeError("backend='cpu' needs the C++ extension trim_fast._C, which is not "
                               "built; reinstall with a C++ compiler or use backend='torch'")
    return backend
