#!/usr/bin/env python
"""Compile the attention_saliency Triton kernels for sm_90 (H100/H200) on a machine without a GPU,
and report registers and spills from ptxas. Catches what the interpreter forgives (types,
constexpr globals, unsupported ops such as int64 atomics) before a GPU is lent.

    python bench/triton_sm90_compile_check.py [--all]

Default: the launch configurations of block_config() for bf16 at D=128 and D=256 and fp32 at
D=128, causal, padded, both column-pass variants. --all: every layout/causal/dtype combination
(slower: about a minute per ten variants on 2 cores). Needs the ptxas that ships with Triton.
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.pop("TRITON_INTERPRET", None)  # the real compiler, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from trim_fast.ops.attention_saliency import triton as tb  # noqa: E402

PTR_TYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}


def signature(fn, dtype, constants):
    types, consts = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in ("q_ptr", "k_ptr"):
            types[name] = PTR_TYPES[dtype]
        elif name in ("seq_lens_ptr", "cu_seqlens_ptr"):
            types[name] = "*i32"
        elif name == "entropy_fixed_ptr":
            types[name] = "*i64"
        elif name.endswith("_ptr"):
            types[name] = "*fp32"
        elif name == "qk_scale_log2":
            types[name] = "fp32"
        elif name in constants:
            types[name] = "constexpr"
            consts[(i,)] = constants[name]
        else:
            types[name] = "i32"
    return types, consts


def ptxas_report(ptx: str) -> str:
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for exe in ("ptxas-blackwell", "ptxas"):  # the newer one reads the PTX version Triton emits
        path = os.path.join(bin_dir, exe)
        if not os.path.exists(path):
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(ptx)
        out = subprocess.run([path, "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull],
                             capture_output=True, text=True)
        os.unlink(f.name)
        if out.returncode == 0:
            keep = [ln.split("info    : ")[-1].strip() for ln in out.stderr.splitlines()
                    if "registers" in ln or "spill" in ln]
            return " | ".join(keep)
    return "ptxas unavailable"


def compile_one(kind, dtype, head_dim, causal, varlen, fuse, cfg):
    block_d = max(16, triton.next_power_of_2(head_dim))
    fn = tb._row_pass_kernel if kind == "row" else tb._col_pass_kernel
    row = kind == "row"
    constants = dict(IS_VARLEN=varlen, CAUSAL=causal, FUSE_ROW_ENTROPY=fuse,
                     BLOCK_M=cfg.row_block_m if row else cfg.col_block_m,
                     BLOCK_N=cfg.row_block_n if row else cfg.col_block_n,
                     BLOCK_D=block_d, EVEN_D=block_d == head_dim,
                     INPUT_PRECISION="ieee" if dtype == torch.float32 else "tf32")
    types, consts = signature(fn, dtype, constants)
    warps = cfg.num_warps if row else (cfg.col_num_warps or cfg.num_warps)
    stages = cfg.num_stages if row else (cfg.col_num_stages or cfg.num_stages)
    compiled = triton.compile(ASTSource(fn, signature=types, constexprs=consts),
                              target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=warps, num_stages=stages))
    return compiled.metadata.shared, ptxas_report(compiled.asm["ptx"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--all", action="store_true")
    args = ap.parse_args()
    if args.all:
        cases = itertools.product([torch.bfloat16, torch.float16, torch.float32], [64, 80, 128, 256],
                                  [True, False], [False, True])
    else:
        cases = [(torch.bfloat16, 128, True, False), (torch.bfloat16, 256, True, False),
                 (torch.float32, 128, True, False), (torch.bfloat16, 80, False, True)]
    failures = 0
    for dtype, head_dim, causal, varlen in cases:
        cfg = tb.block_config(head_dim, dtype, max_seqlen=4096, capability=(9, 0))
        for kind, fuse in (("row", False), ("col", False), ("col", True)):
            label = (f"{kind}{'+fused-entropy' if fuse else ''} {str(dtype)[6:]} D={head_dim} "
                     f"{'causal' if causal else 'bidir'} {'varlen' if varlen else 'padded'}")
            try:
                shared, regs = compile_one(kind, dtype, head_dim, causal, varlen, fuse, cfg)
                print(f"ok   {label}: shared {shared} B; {regs}", flush=True)
            except Exception as e:  # report every failing variant, then fail
                failures += 1
                print(f"FAIL {label}: {type(e).__name__}: {str(e)[:2000]}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
