"""SPEC 5 warmup for the study: a LoRA adapter trained with ``trim_fast.warmup.run_warmup`` and
the SPEC defaults (seeded 5% of the pool, r 128, alpha 512, dropout 0.1 on q/k/v/o, lr 2e-5,
4 epochs, loss on response tokens), fp32 on CPU, saved under /tmp/study-cache/adapters/<name>.

    python bench/study/warmup.py --pool hard --seed 0 --name hard0
    python bench/study/cache.py --pool hard --seed 0 --adapter /tmp/study-cache/adapters/hard0 --name hard0w
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", choices=("hard", "demo"), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from cache import CACHE_ROOT, load_sets

    from trim_fast.models.loading import load_tokenizer
    from trim_fast.warmup import WarmupConfig, run_warmup

    _, examples, _ = load_sets(args.pool, args.seed)
    out = os.path.join(CACHE_ROOT, "adapters", args.name)
    t0 = time.perf_counter()
    res = run_warmup(None, examples, load_tokenizer(), WarmupConfig(dtype="fp32"), out, device="cpu",
                     progress=False)
    print(f"warmup on {len(res.subset_ids)} examples, {len(res.losses)} steps, losses "
          f"{[round(x, 4) for x in res.losses]}, {time.perf_counter() - t0:.0f}s -> {out}")


if __name__ == "__main__":
    main()
