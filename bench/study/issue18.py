"""Issue 18's measurements: how many leading content tokens to drop, whether the first token of
each assistant turn needs it too, LLaMA-Factory rows against chat records, and how several tasks
combine into one coreset. Every score comes from trim_fast.Selector (the shipped path); the
forward passes run once (ForwardCache) and each variant re-scores.

    python bench/study/issue18.py OUT.json [--kinds hard,firstword,demo] [--per-family 60]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


import trim_fast.data.render as render
import trim_fast.scoring.engine as engine
from trim_fast import Selector
from trim_fast.config import SelectionConfig
from trim_fast.data import open_records
from trim_fast.demo import generate as demo_pool
from trim_fast.demo import hard as hard_pool
from trim_fast.scoring.engine import ForwardCache
from trim_fast.selection import choose, select_top_k

ASSISTANT_HEADER = None  # token ids of the template's assistant header, set in main


def p_at_family(scores, families, fam):
    k = sum(f == fam for f in families)
    idx = select_top_k(scores, k).tolist()
    return sum(families[i] == fam for i in idx) / k


def lf_rows(tok, examples):
    """LLaMA-Factory supervised rows: prompt (template, system, user) labelled -100, the
    assistant content and the template's `<|im_end|>\\n` after it labelled."""
    rows = []
    for ex in examples:
        msgs = ex.messages
        prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(msgs, tokenize=False)
        assert full.startswith(prompt)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        r = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
        rows.append({"input_ids": p + r, "labels": [-100] * len(p) + r,
                     "family": ex.meta.get("family")})
    return rows


def drop_assistant_first(tokenized):
    """Variant: the first token after each assistant header does not count either."""
    h = ASSISTANT_HEADER
    ids, counted = tokenized.ids, list(tokenized.counted)
    for i in range(len(ids) - len(h)):
        if tuple(ids[i:i + len(h)]) == h and i + len(h) < len(ids):
            counted[i + len(h)] = False
    tokenized.counted = counted
    return tokenized


def run_variant(selector, pool, targets, cache, method, scope="all"):
    cfg = SelectionConfig(method=method, scope=scope)
    sel = Selector(selector.model, selector.tokenizer, cfg)
    banks = sel.fingerprint(targets, pool=pool, forward_cache=cache)
    return sel.score(pool, banks, forward_cache=cache).score, banks


def summarize(ts, families, fams):
    pf = [p_at_family(ts[i], families, f) for i, f in enumerate(fams)]
    return {"per_task": dict(zip(fams, pf)), "mean": statistics.fmean(pf), "worst": min(pf)}


def coverage(ts, families, fams, how, fraction=0.05):
    choice = choose(ts, combine=how, fraction=fraction)
    share = {f: sum(families[i] == f for i in choice.indices) for f in fams}
    fair = choice.k / len(fams)
    prec = sum(families[i] in fams for i in choice.indices) / choice.k
    return {"k": choice.k, "counts": share, "min_share_of_fair": min(share.values()) / fair,
            "precision_in_file": prec}


def main():
    global ASSISTANT_HEADER
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--kinds", default="hard,firstword")
    ap.add_argument("--per-family", type=int, default=60)
    ap.add_argument("--pool-size", type=int, default=1000)
    ap.add_argument("--leads", default="0,1,2,3")
    ap.add_argument("--methods", default="matched,paper")
    ap.add_argument("--seeds", default="0", help="pool seeds (hard / firstword), e.g. 0,1,2")
    ap.add_argument("--leads-only", action="store_true",
                    help="only the lead-token variants (no assistant-first / LLaMA-Factory runs)")
    args = ap.parse_args()
    selector = Selector(None, config=SelectionConfig())
    tok = selector.tokenizer
    ASSISTANT_HEADER = tuple(tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    orig_tokenize = engine.tokenize_example
    results = {}
    runs = [(kind, seed) for kind in args.kinds.split(",")
            for seed in (map(int, args.seeds.split(",")) if kind != "demo" else (0,))]
    for kind_name, seed in runs:
        kind = kind_name
        d = tempfile.mkdtemp()
        if kind == "demo":
            man = demo_pool.generate(d, pool_size=args.pool_size, targets_per_family=8, seed=0)
        else:
            man = hard_pool.generate(d, per_family=args.per_family, targets_per_family=8, seed=seed,
                                     first_words=(kind == "firstword"))
        pool = list(open_records(man["pool"]))
        targets = {os.path.basename(p).split(".")[0]: list(open_records(p))
                   for p in man["targets"].values()}
        families = [e.meta.get("family") for e in pool]
        fams = [targets[t][0].meta["family"] for t in targets]
        cache = ForwardCache()
        res = results[kind if seed == 0 else f"{kind} seed={seed}"] = {}
        t0 = time.perf_counter()
        for method in args.methods.split(","):
            for lead in map(int, args.leads.split(",")):
                render.LEAD_TOKENS = lead
                ts, _ = run_variant(selector, pool, targets, cache, method)
                row = summarize(ts, families, fams)
                if kind == "demo" or lead == 1:
                    row["combine"] = {how: coverage(ts, families, fams, how)
                                      for how in ("max", "mean", "quantile")}
                res[f"{method} lead={lead}"] = row
                print(kind, seed, method, lead, round(row["mean"], 3), round(row["worst"], 3),
                      round(time.perf_counter() - t0), flush=True)
            render.LEAD_TOKENS = 1
            if kind != "demo" and not args.leads_only:
                engine.tokenize_example = lambda *a, **k: drop_assistant_first(orig_tokenize(*a, **k))
                try:
                    ts, _ = run_variant(selector, pool, targets, cache, method)
                finally:
                    engine.tokenize_example = orig_tokenize
                res[f"{method} lead=1 + assistant first"] = summarize(ts, families, fams)
                print(kind, method, "asst", res[f"{method} lead=1 + assistant first"]["mean"], flush=True)
                # scope response: chat records against LLaMA-Factory rows (labels on <|im_end|>\n)
                ts, _ = run_variant(selector, pool, targets, cache, method, scope="response")
                res[f"{method} chat scope=response"] = summarize(ts, families, fams)
                rows = lf_rows(tok, pool)
                trows = {t: lf_rows(tok, targets[t]) for t in targets}
                ts, _ = run_variant(selector, rows, trows, cache, method, scope="response")
                res[f"{method} LLaMA-Factory rows"] = summarize(ts, families, fams)
                print(kind, method, "resp", res[f"{method} chat scope=response"]["mean"],
                      res[f"{method} LLaMA-Factory rows"]["mean"], flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
