"""Extra peak memory of one attention_saliency call on the CPU, each backend in its own process.

Extra peak = VmHWM (peak resident set, /proc/self/status) after the call minus VmHWM before it,
with inputs already built and a small warm-up call done (libraries, thread pools loaded).

    python bench/attention_saliency_cpu_memory.py                 # N=8192, H=8, D=64, causal fp32
    python bench/attention_saliency_cpu_memory.py --heads 1 --backends reference_fp64

``cpu`` goes through the public entry (its input checks included); ``cpu_kernel`` calls the C++
binding alone. A backend may run under an address-space cap (--cap-gib): if it hits the cap, its extra peak is
reported as a lower bound instead of crashing the machine (the fp64 reference at N=8192 with
H=8 wants tens of GiB).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

BACKENDS = ("cpu", "cpu_kernel", "torch", "reference_fp64", "reference_fp32")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _hwm_kib() -> int:
    return _status_kib("VmHWM")


def _child(backend: str, n: int, heads: int, dim: int, cap_gib: float | None) -> dict:
    import torch

    from trim_fast import reference
    from trim_fast.ops.attention_saliency import attention_saliency

    torch.set_num_threads(2)

    def call(q, k):
        if backend == "cpu_kernel":  # the C++ binding alone, without the entry's input checks
            from trim_fast._ext import _C

            lens = torch.tensor([q.shape[2]]).numpy()
            return _C.attention_saliency_padded(q.numpy(), k.numpy(), lens, True,
                                                q.shape[-1] ** -0.5, 0, None, 2)
        if backend in ("cpu", "torch"):
            return attention_saliency(q, k, causal=True, backend=backend)
        return reference.attention_saliency(q, k, causal=True, upcast=backend == "reference_fp64")

    gen = torch.Generator().manual_seed(0)
    call(torch.randn(1, heads, 64, dim, generator=gen), torch.randn(1, heads, 64, dim, generator=gen))
    q = torch.randn(1, heads, n, dim, generator=gen)
    k = torch.randn(1, heads, n, dim, generator=gen)
    before = _hwm_kib()
    vm_size_before = _status_kib("VmSize")
    if cap_gib is not None:
        resource.setrlimit(resource.RLIMIT_AS, (int(cap_gib * 2**30), resource.RLIM_INFINITY))
    try:
        call(q, k)
        hit_cap = False
    except (MemoryError, RuntimeError) as exc:  # torch raises RuntimeError on a failed allocation
        if "alloc" not in str(exc).lower() and not isinstance(exc, MemoryError):
            raise
        hit_cap = True
    after = _hwm_kib()
    return {"backend": backend, "n": n, "heads": heads, "dim": dim, "inputs_mib": 2 * q.numel() * 4 / 2**20,
            "before_mib": before / 1024, "extra_peak_mib": (after - before) / 1024, "hit_cap": hit_cap,
            "cap_gib": cap_gib, "vm_size_before_mib": vm_size_before / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--backends", nargs="+", default=["cpu", "reference_fp64"], choices=BACKENDS)
    ap.add_argument("--cap-gib", type=float, default=None,
                    help="address-space cap for the reference backends")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        cap = args.cap_gib if args.child.startswith("reference") else None
        print(json.dumps(_child(args.child, args.n, args.heads, args.dim, cap)))
        return
    for backend in args.backends:
        cmd = [sys.executable, __file__, "--child", backend, "--n", str(args.n), "--heads",
               str(args.heads), "--dim", str(args.dim)]
        if args.cap_gib is not None:
            cmd += ["--cap-gib", str(args.cap_gib)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(json.dumps({"backend": backend, "error": out.stderr.strip().splitlines()[-1:]}))
            continue
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
