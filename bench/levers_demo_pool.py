"""Issue 19's Done-when figure: pool scoring's forward with the exact levers (shared prefix once,
tails cut; the default ForwardLoop) against the bare full forward of today's batches
(length-sorted, whole examples, ``max_tokens`` 8192), on the generated demo pool as ONE chunk
(the default chunk_size 4096 holds the whole demo pool), embedded SmolLM2, interleaved rounds.

    python bench/levers_demo_pool.py THREADS POOL_SIZE ROUNDS  > result.json  (e.g. 2 1000 1)

The last line printed is the JSON result (best-of seconds per path and their ratios)."""
import json
import sys
import tempfile
import time

import torch

from trim_fast import Selector
from trim_fast.batching import pad_batch, token_budget_batches
from trim_fast.capture import encode_last_hidden
from trim_fast.capture.attention import base_model_of
from trim_fast.capture.forward import ForwardLoop
from trim_fast.config import SelectionConfig
from trim_fast.data import open_records
from trim_fast.demo.generate import generate
from trim_fast.scoring.engine import tokenize_chunk

threads, size, rounds = (int(a) for a in sys.argv[1:4])
torch.set_num_threads(threads)
sel = Selector()
base = base_model_of(sel.model)
data = generate(tempfile.mkdtemp(), pool_size=size, targets_per_family=8, seed=0)
chunk = tokenize_chunk(sel.tokenizer, list(open_records(data["pool"]))[:size],
                       SelectionConfig().resolved())
lengths, pad = chunk.lengths(), sel.pad_id


def bare():
    for b in token_budget_batches(lengths, 8192):
        ids, mask, _ = pad_batch([chunk.example(i) for i in b], pad, "cpu")
        encode_last_hidden(base, ids, mask)


loop = ForwardLoop(base, pad_id=pad, max_tokens=8192)
paths = {"bare": bare, "levers_8192": lambda: [None for _ in loop.hidden_batches(chunk)]}
times = {k: [] for k in paths}
for _ in range(rounds):
    for name, fn in paths.items():
        t0 = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t0)
        print(name, round(times[name][-1], 2), flush=True)
best = {k: min(v) for k, v in times.items()}
print(json.dumps({"examples": size, "tokens": sum(lengths), "best": best,
                  "ratios": {k: best["bare"] / v for k, v in best.items()}, "all": times}))
