#!/usr/bin/env bash
# Every GPU check in one run, for a lent H100/H200 (the device tool runs it from the repo root):
#   bash bench/gpu_all.sh            figures land in $OUT (default bench/results/gpu)
# The GPU image has torch, triton, transformers and peft, but neither faiss nor the GGUF model:
# the nearest-fingerprint search is timed as an exact torch matmul + top-1 (faiss-gpu only where
# it is built), and the model benchmarks use SmolLM2-135M's architecture with random weights,
# which time the same. Each step has its own time limit so one slow step cannot eat the rest; the
# limits sum to 470 s, inside a lease of 15 device minutes. At most 8 files come back: no plot.
set -uo pipefail
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; echo "rc=$?" | tee -a "$OUT/$name.txt"; tail -25 "$OUT/$name.txt"; }
{ nvidia-smi; python -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())"; } > "$OUT/env.txt" 2>&1
step kernel_tests 150 python -m pytest -q -p no:cacheprovider tests/test_attention_saliency_triton.py tests/test_token_match.py tests/test_fingerprints.py tests/test_selection.py
step attention_saliency 100 python bench/gpu_attention_saliency.py --out "$OUT/attention_saliency.json"
step capture 50 python bench/bench_capture.py --device cuda --dtype bfloat16 --backends triton,torch --repeats 5
# trim-fast bench: scoring (levers on / off) vs bare forward vs naive frontend, saliency vs SDPA
step trim_bench 120 python -m trim_fast bench --device cuda --pool-size 2048 --max-tokens 65536 --repeats 2 --saliency-n 1024 4096 16384 --no-plot --out "$OUT/trim_bench.json"
step scoring 50 python bench/bench_scoring.py --device cuda --backends triton,torch --tokens 4000000
echo "done: $OUT"
