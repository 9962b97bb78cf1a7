"""Where `trim-fast bench`'s paths spend their time: cProfile (host) and torch.profiler (device)
of each path after a warm-up, on the benchmark's own pool and model.

    python bench/gpu_profile.py --device cuda --pool-size 2048 --max-tokens 65536
"""
import argparse
import cProfile
import io
import pstats
import time

import torch

from trim_fast.benchmark import bench_paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--pool-size", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=65536)
    ap.add_argument("--paths", nargs="+", default=["trim_scoring", "trim_scoring_plain", "bare_forward"])
    ap.add_argument("--top", type=int, default=18)
    args = ap.parse_args()
    b = bench_paths(pool_size=args.pool_size, device=args.device, max_tokens=args.max_tokens)
    sync = torch.cuda.synchronize if b.dev.type == "cuda" else (lambda: None)
    acts = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if b.dev.type == "cuda" else [])
    with torch.inference_mode():
        for name in args.paths:
            fn = b.paths[name]
            fn(b.chunk), fn(b.chunk)
            sync()
            t0 = time.perf_counter()
            fn(b.chunk)
            sync()
            wall = time.perf_counter() - t0
            prof = cProfile.Profile()
            prof.enable()
            fn(b.chunk)
            sync()
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
            body = out.getvalue()
            print(f"===== {name}: {wall:.4f} s wall; cProfile by own time")
            print(body[body.find("   ncalls"):])
            with torch.profiler.profile(activities=acts) as tp:
                fn(b.chunk)
                sync()
            key = "self_cuda_time_total" if b.dev.type == "cuda" else "self_cpu_time_total"
            print(tp.key_averages().table(sort_by=key, row_limit=args.top, max_name_column_width=48))


if __name__ == "__main__":
    main()
