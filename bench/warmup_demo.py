"""Time the warmup of the demo pool on the embedded SmolLM2 (bench/results/warmup.md).

    PYTHONPATH=. python bench/warmup_demo.py [--threads 2] [warmup flags, e.g. --epochs 4 --lora-r 128]

Generates the 1000-example demo pool (seed 0), then runs ``trim-fast warmup`` on it with 2 threads.
"""
import os
import sys
import time

import torch

# --threads N (default 2) before the warmup flags: 2 threads on a machine shared with other
# jobs oversubscribe the cores; the measurement notes say which was used
THREADS = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 2
if "--threads" in sys.argv:
    del sys.argv[sys.argv.index("--threads"): sys.argv.index("--threads") + 2]
torch.set_num_threads(THREADS)

from trim_fast.cli import main as trim_fast_main  # noqa: E402
from trim_fast.demo.generate import generate  # noqa: E402


def main() -> None:
    work = os.environ.get("WARMUP_BENCH_DIR", "/tmp/warmup_bench")
    manifest = generate(os.path.join(work, "data"), pool_size=1000, seed=0)
    argv = ["warmup", "--out", os.path.join(work, "adapter"),
            *sum((["--pool", p] for p in manifest["pool"]), []), *sys.argv[1:]]
    t0, c0 = time.perf_counter(), time.process_time()
    trim_fast_main(argv)
    print(f"threads {THREADS}; total (load + tokenise + train + save): wall {time.perf_counter() - t0:.1f}s, "
          f"process CPU {time.process_time() - c0:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
