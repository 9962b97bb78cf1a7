"""Study cache (issue 14): one forward of a labelled pool and its targets with
``output_hidden_states=True``; every layer's hidden states at the counted tokens, and the targets'
attention saliency, written once under ``/tmp/study-cache/<name>`` so that every scoring variant
of ``bench/study/score.py`` runs from disk without the model.

    python bench/study/cache.py --pool hard --seed 0 [--adapter DIR] --name hard0

Layout of ``<name>/``:

- ``meta.pt``: pool and target token ids (full sequences), counted masks (scope ``all``) and,
  per counted token, whether it is in an assistant turn; families; example ids and texts;
  seconds of the pool forward; the layers' count.
- ``layer_XX.pt`` for XX = 0 (embeddings) .. 30 (layer outputs, pre final norm) and ``layer_final.pt``
  (``last_hidden_state``, after the final norm; what the SPEC's TRIM uses):
  ``{"pool": [Tp, d] fp16, "targets": [Tt, d] fp32}`` at the counted tokens, in example order.
- ``saliency.pt``: the targets' ``row`` (Q) and ``col`` (K) parts at counted tokens from
  :func:`trim_fast.capture.capture_saliency` with L = 1, 3, 6 (SPEC default) and all layers.

Model: the embedded SmolLM2-135M-Instruct (``load_model()``, fp32 on CPU), or with ``--adapter``
the LoRA warmup adapter merged into it (``load_model(adapter=...)``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

CACHE_ROOT = "/tmp/study-cache"


def pool_files(pool: str, seed: int) -> dict:
    """Generate (idempotently) the demo or hard pool for ``seed``; its manifest."""
    out = os.path.join(CACHE_ROOT, "pools", f"{pool}{seed}")
    if pool == "hard":
        from trim_fast.demo.hard import generate

        return generate(out, seed=seed)
    from trim_fast.demo.generate import generate

    return generate(out, pool_size=1000, targets_per_family=8, seed=seed)


def load_sets(pool: str, seed: int):
    from trim_fast.data import load_examples

    m = pool_files(pool, seed)
    examples = load_examples(m["pool"])
    targets = {f: load_examples([p]) for f, p in m["targets"].items()}
    return m, examples, targets


def _tokenize(tok, examples):
    from trim_fast.data import tokenize_example

    ids, counted, response = [], [], []
    for ex in examples:
        t_all = tokenize_example(tok, ex, scope="all")
        t_resp = tokenize_example(tok, ex, scope="response")
        assert t_all.ids == t_resp.ids
        c = torch.tensor(t_all.counted, dtype=torch.bool)
        r = torch.tensor(t_resp.counted, dtype=torch.bool)
        ids.append(torch.tensor(t_all.ids, dtype=torch.long))
        counted.append(c)
        response.append(r[c])  # per counted token: in an assistant turn?
    return ids, counted, response


def forward_all_layers(model, ids, counted, pad_id, max_tokens=4096):
    """Per layer (0..L, then 'final'), the hidden states at counted tokens, in example order."""
    from trim_fast.capture import token_budget_batches
    from trim_fast.pool import pad_batch

    depth = model.config.num_hidden_layers
    per_ex: list[list[torch.Tensor] | None] = [None] * len(ids)
    t0 = time.perf_counter()
    for batch in token_budget_batches([x.numel() for x in ids], max_tokens):
        b_ids, mask, cnt = pad_batch([(ids[i], counted[i]) for i in batch], pad_id, "cpu")
        pos = (torch.arange(b_ids.shape[1])[None, :].expand_as(b_ids) * mask)
        with torch.inference_mode():
            out = model(input_ids=b_ids, attention_mask=mask, position_ids=pos, use_cache=False,
                        output_hidden_states=True, return_dict=True)
        hs = list(out.hidden_states)
        assert len(hs) == depth + 1, len(hs)
        hs.append(out.last_hidden_state)
        for row, i in enumerate(batch):
            c = cnt[row]
            per_ex[i] = [h[row][c].float().clone() for h in hs]
    seconds = time.perf_counter() - t0
    layers = []
    for l in range(depth + 2):
        layers.append(torch.cat([per_ex[i][l] for i in range(len(ids))]))
    return layers, seconds


def target_saliency(model, ids, counted, pad_id):
    from trim_fast.capture import capture_saliency
    from trim_fast.pool import pad_batch

    depth = model.config.num_hidden_layers
    out = {}
    for L in (1, 3, 6, depth):
        rows, cols, finals = [], [], []
        for i in range(len(ids)):  # one at a time: no padding question at all
            b_ids, mask, cnt = pad_batch([(ids[i], counted[i])], pad_id, "cpu")
            cap = capture_saliency(model, b_ids, mask, layers=L)
            rows.append(cap.row[0][cnt[0]].float())
            cols.append(cap.col[0][cnt[0]].float())
            finals.append(cap.hidden[0][cnt[0]].float())
        out[L] = {"row": torch.cat(rows), "col": torch.cat(cols)}
        out.setdefault("final_check", torch.cat(finals))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", choices=("hard", "demo"), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--name", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from trim_fast.models.loading import load_model, load_tokenizer

    out_dir = os.path.join(CACHE_ROOT, args.name)
    os.makedirs(out_dir, exist_ok=True)
    m, examples, targets = load_sets(args.pool, args.seed)
    tok = load_tokenizer()
    model = load_model(adapter=args.adapter, device="cpu", dtype="fp32")
    fams = list(targets)
    t_examples = [e for f in fams for e in targets[f]]
    p_ids, p_cnt, p_resp = _tokenize(tok, examples)
    t_ids, t_cnt, t_resp = _tokenize(tok, t_examples)
    print(f"pool {len(examples)} examples, {sum(int(c.sum()) for c in p_cnt)} counted of "
          f"{sum(x.numel() for x in p_ids)} tokens; targets {len(t_examples)}", flush=True)

    t_layers, _ = forward_all_layers(model, t_ids, t_cnt, tok.pad_token_id)
    sal = target_saliency(model, t_ids, t_cnt, tok.pad_token_id)
    err = (sal.pop("final_check") - t_layers[-1]).abs().max().item()
    print(f"capture_saliency hidden vs output_hidden_states final: max abs diff {err:.2e}", flush=True)
    assert err < 1e-3, err
    torch.save(sal, os.path.join(out_dir, "saliency.pt"))

    p_layers, seconds = forward_all_layers(model, p_ids, p_cnt, tok.pad_token_id)
    print(f"pool forward (all hidden states): {seconds:.1f}s", flush=True)
    for l, (ph, th) in enumerate(zip(p_layers, t_layers)):
        name = "final" if l == len(p_layers) - 1 else f"{l:02d}"
        mx = ph.abs().max().item()
        store = ph.half() if mx < 6e4 else ph  # fp16 unless it would overflow
        torch.save({"pool": store, "targets": th}, os.path.join(out_dir, f"layer_{name}.pt"))
    torch.save({
        "pool": {"ids": p_ids, "counted": p_cnt, "response": p_resp,
                 "families": [e.meta.get("family") for e in examples],
                 "example_ids": [e.id for e in examples],
                 "texts": ["\n".join(mm["content"] for mm in e.messages) for e in examples]},
        "targets": {"ids": t_ids, "counted": t_cnt, "response": t_resp,
                    "families": [e.meta.get("family") for e in t_examples],
                    "texts": ["\n".join(mm["content"] for mm in e.messages) for e in t_examples]},
        "task_families": fams, "pool_name": args.pool, "seed": args.seed, "adapter": args.adapter,
        "depth": model.config.num_hidden_layers, "seconds_pool_forward": seconds,
        "manifest": m,
    }, os.path.join(out_dir, "meta.pt"))
    print(f"cached to {out_dir}", flush=True)


if __name__ == "__main__":
    main()
