"""Selection quality on a labelled pool: TRIM against baselines, ablations, a downstream check.

Every TRIM number here comes from the shipped path, :class:`trim_fast.Selector`: the same
fingerprinting, batching, scoring and selection as ``trim-fast select`` (a test checks they are
equal bit for bit). The pool's forward passes run once; a :class:`ForwardCache` keeps their
hidden states in memory, so each ablation (other banks, pooling or fallback settings) re-scores
without a forward. Each target file is a task; a pool example is relevant to a task when its
``family`` field equals the targets' family.
"""
from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Sequence

import torch

from trim_fast.api import Selector
from trim_fast.batching import pad_batch
from trim_fast.data import Example, Records, tokenize_example
from trim_fast.evaluation.metrics import bm25_scores, precision_recall, random_selections
from trim_fast.models.prepare import forward_model
from trim_fast.scoring.engine import ForwardCache, iter_chunks, tokenize_chunk
from trim_fast.selection import num_selected, select_top_k

logger = logging.getLogger(__name__)

K_FRACTIONS = (0.01, 0.05, 0.10)
RANDOM_SEEDS = tuple(range(10))


def example_text(ex: Example) -> str:
    return ex.text if ex.text is not None else "\n".join(m["content"] for m in ex.messages)


def mean_pooled_states(selector: Selector, records, cache: ForwardCache) -> torch.Tensor:
    """``[P, d]`` unit vectors: each example's last hidden states averaged over its counted
    tokens (all tokens when none counts), batched as the scorer batches (so the forward passes
    are the cache's). The sample-level baseline's representation."""
    cfg = selector.config
    out = []
    with forward_model(selector.model) as base:
        device = next(base.parameters()).device
        for _, _, examples in iter_chunks(records, cfg.chunk_size):
            chunk = tokenize_chunk(selector.tokenizer, examples, cfg)
            pooled = [None] * len(chunk)
            for batch in chunk.batches(cfg.max_tokens):
                ids, mask, counted = pad_batch([chunk.example(i) for i in batch], selector.pad_id,
                                               device)
                from trim_fast.capture import encode_last_hidden

                hidden = cache.hidden(ids, lambda: encode_last_hidden(base, ids, mask)).float()
                for row, i in enumerate(batch):
                    keep = counted[row] if bool(counted[row].any()) else mask[row].bool()
                    v = hidden[row][keep].mean(0)
                    pooled[i] = v / v.norm().clamp_min(1e-12)
            out.extend(pooled)
    return torch.stack(out).cpu()


def _ks(pool_size: int, family_size: int) -> dict[str, int]:
    ks = {f"{int(f * 100)}%": num_selected(pool_size, fraction=f) for f in K_FRACTIONS}
    ks["|family|"] = family_size
    return ks


def evaluate_selector(scores: torch.Tensor | None, families: Sequence, lengths: Sequence[int],
                      family) -> dict:
    """Precision/recall at each k and the mean/median token length of the 5% selection; for the
    random selector (``scores=None``) the mean over seeded random selections."""
    family_size = sum(1 for f in families if f == family)
    out = {}
    for name, k in _ks(len(families), family_size).items():
        if scores is not None:
            sels = [select_top_k(scores, k).tolist()]
        else:
            sels = random_selections(len(families), k, RANDOM_SEEDS)
        pr = [precision_recall(s, families, family) for s in sels]
        out[f"P@{name}"] = sum(p for p, _ in pr) / len(pr)
        out[f"R@{name}"] = sum(r for _, r in pr) / len(pr)
        if name == "5%":
            chosen = [lengths[i] for s in sels for i in s]
            out["len_mean@5%"] = statistics.fmean(chosen)
            out["len_median@5%"] = statistics.median(chosen)
    return out


ABLATIONS: list[tuple[str, str, dict]] = [
    # (group, label, SelectionConfig overrides of the default)
    ("layers L", "L=1", {"layers": 1}),
    ("layers L", "L=3", {"layers": 3}),
    ("layers L", "L=6 (default)", {}),
    ("layers L", "L=all", {"layers": 10_000}),
    ("saliency", "row only", {"w_row": 1.0, "w_col": 0.0}),
    ("saliency", "column only", {"w_row": 0.0, "w_col": 1.0}),
    ("saliency", "equal (default)", {}),
    ("pooling", "mean", {"w_mean": 1.0, "w_max": 0.0, "w_coverage": 0.0}),
    ("pooling", "max", {"w_mean": 0.0, "w_max": 1.0, "w_coverage": 0.0}),
    ("pooling", "mean+max", {"w_coverage": 0.0}),
    ("pooling", "mean+max+coverage (default)", {}),
    ("fallback", "lambda=0", {"fallback_penalty": 0.0}),
    ("fallback", "lambda=0.5", {"fallback_penalty": 0.5}),
    ("fallback", "lambda=0.9 (default)", {}),
    ("fallback", "lambda=1 (unseen score 0)", {"fallback_penalty": 1.0}),
    ("fallback", "skip unseen", {"fallback": "skip"}),
    ("idf", "idf=pool (default)", {}),
    ("idf", "idf=none", {"idf": "none"}),
    ("scope", "all (default)", {}),
    ("scope", "response", {"scope": "response"}),
    ("scope", "prompt", {"scope": "prompt"}),
]


def trim_task_scores(selector: Selector, pool, targets: dict, cache: ForwardCache) -> torch.Tensor:
    """``[T, P]``: every task's TRIM scores, through the shipped path."""
    banks = selector.fingerprint(targets, pool=pool)
    return selector.score(pool, banks, forward_cache=cache).score


def run_quality(selector: Selector, pool: Records, targets: dict[str, Records], *,
                ablations: bool = True) -> dict:
    """The per-family table (TRIM and baselines) and the ablation table (mean over families)."""
    t0 = time.perf_counter()
    cfg = selector.config
    cache = ForwardCache()
    examples = list(pool)
    families = [e.meta.get("family") for e in examples]
    if not any(families):
        raise ValueError("eval needs a labelled pool: records with a 'family' field")
    banks = selector.fingerprint(targets, pool=pool)
    scores = selector.score(pool, banks, forward_cache=cache)
    lengths = scores.n_tokens.tolist()
    logger.info("pool of %d scored in %.1fs", len(examples), scores.seconds_forward)
    fam_of = {task: banks[task].meta.get("family") for task in targets}
    pooled = mean_pooled_states(selector, pool, cache)
    texts = [example_text(e) for e in examples]
    k5 = num_selected(len(examples), fraction=0.05)
    per_family = {}
    for t_i, task in enumerate(targets):
        fam = fam_of[task]
        target_examples = list(targets[task])
        centroid = mean_pooled_states(selector, target_examples, cache).mean(0)
        rows = {
            "TRIM": evaluate_selector(scores.score[t_i], families, lengths, fam),
            "random": evaluate_selector(None, families, lengths, fam),
            "repsim": evaluate_selector(pooled @ (centroid / centroid.norm()), families, lengths, fam),
            "bm25": evaluate_selector(bm25_scores(texts, [example_text(e) for e in target_examples]),
                                      families, lengths, fam),
        }
        per_family[task] = {"family": fam, "family_size": sum(f == fam for f in families),
                            "selectors": rows,
                            "trim_top5": select_top_k(scores.score[t_i], k5).tolist()}
        logger.info("%s: TRIM P@5%% %.3f, random %.3f, repsim %.3f, bm25 %.3f", task,
                    rows["TRIM"]["P@5%"], rows["random"]["P@5%"], rows["repsim"]["P@5%"],
                    rows["bm25"]["P@5%"])
    result = {"pool_size": len(examples), "families": per_family, "config": cfg.__dict__.copy(),
              "trim_scores": scores.score.tolist()}
    if ablations:
        table = []
        for group, label, over in ABLATIONS:
            variant = Selector(selector.model, selector.tokenizer, cfg.replace(**over))
            task_scores = trim_task_scores(variant, pool, targets, cache)
            metrics = [evaluate_selector(task_scores[t_i], families, lengths, fam_of[task])
                       for t_i, task in enumerate(targets)]
            table.append({"group": group, "setting": label,
                          "P@5%": statistics.fmean(m["P@5%"] for m in metrics),
                          "P@|family|": statistics.fmean(m["P@|family|"] for m in metrics),
                          "min P@5%": min(m["P@5%"] for m in metrics)})
        result["ablations"] = table
        logger.info("%d ablations done", len(ABLATIONS))
    result["seconds"] = time.perf_counter() - t0
    return result


def format_markdown(result: dict, downstream: dict | None = None) -> str:
    """The tables of a run as markdown."""
    lines = [f"Pool: {result['pool_size']} examples. Precision (P) and recall (R) at k; random is "
             f"the mean over {len(RANDOM_SEEDS)} seeds.", ""]
    head = ["task", "family size", "selector", "P@1%", "P@5%", "P@10%", "P@|family|", "R@5%",
            "R@10%", "len mean@5%", "len median@5%"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task, fam in result["families"].items():
        for name, m in fam["selectors"].items():
            lines.append("| " + " | ".join([task, str(fam["family_size"]), name] + [
                f"{m[k]:.3f}" for k in ("P@1%", "P@5%", "P@10%", "P@|family|", "R@5%", "R@10%")]
                + [f"{m['len_mean@5%']:.1f}", f"{m['len_median@5%']:.1f}"]) + " |")
    if "ablations" in result:
        lines += ["", "Ablations (TRIM; mean over the tasks, and the worst task's P@5%):", "",
                  "| group | setting | P@5% | P@|family| | min P@5% |", "|---|---|---|---|---|"]
        for r in result["ablations"]:
            lines.append(f"| {r['group']} | {r['setting']} | {r['P@5%']:.3f} | {r['P@|family|']:.3f} "
                         f"| {r['min P@5%']:.3f} |")
    if downstream:
        size = sorted(set(downstream["train_size"].values()))
        lines += ["", f"Downstream: LoRA fine-tune on each selection ({'/'.join(map(str, size))} "
                  f"examples), held-out loss on {downstream['heldout_size']} new "
                  f"'{downstream['family']}' examples:", "",
                  "| model | held-out loss |", "|---|---|"]
        for name, loss in downstream["losses"].items():
            lines.append(f"| {name} | {loss:.4f} |")
    return "\n".join(lines) + "\n"


def write_plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(result["families"])
    selectors = list(next(iter(result["families"].values()))["selectors"])
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 4))
    width = 0.8 / len(selectors)
    for s_i, sel in enumerate(selectors):
        vals = [result["families"][t]["selectors"][sel]["P@5%"] for t in tasks]
        ax.bar([i + s_i * width for i in range(len(tasks))], vals, width, label=sel)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks, rotation=20, ha="right")
    ax.set(ylabel="precision@5%", title="selection precision per target family", ylim=(0, 1.05))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_result(result: dict, out_dir: str, downstream: dict | None = None) -> None:
    from trim_fast.run.files import atomic_open
    from trim_fast.run.outputs import write_json

    os.makedirs(out_dir, exist_ok=True)
    write_json(dict(result, downstream=downstream), os.path.join(out_dir, "quality.json"))
    with atomic_open(os.path.join(out_dir, "quality.md")) as f:
        f.write(format_markdown(result, downstream))
    write_plot(result, os.path.join(out_dir, "quality.png"))


def heldout_loss(model, tokenizer, examples: Sequence[Example], *, max_length: int = 2048,
                 batch: int = 8) -> float:
    """Mean cross-entropy per response token of a causal LM on ``examples`` (prompt tokens and
    template text carry no loss, as in the warmup)."""
    from trim_fast.warmup import build_training_batch, loss_sum

    toks = [tokenize_example(tokenizer, ex, scope="response", max_length=max_length) for ex in examples]
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for s in range(0, len(toks), batch):
            b = build_training_batch(toks[s:s + batch], tokenizer.pad_token_id, device)
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
            loss, n = loss_sum(out.logits, b["labels"])
            total += float(loss)
            count += n
    if count == 0:
        raise ValueError("held-out set has no response tokens")
    return total / count


def run_downstream(model_name, tokenizer, pool: Sequence[Example], selections: dict[str, list[int]],
                   heldout: Sequence[Example], family: str, out_dir: str, *, seed: int = 0,
                   warmup_overrides: dict | None = None) -> dict:
    """LoRA fine-tune the model on each selection (``{name: pool indices}``, same size, same
    seed, same budget); report each one's held-out loss on new examples of ``family``, and the
    base model's."""
    from trim_fast.config import WarmupConfig
    from trim_fast.models.loading import parse_dtype
    from trim_fast.models.loading import load_causal_lm
    from trim_fast.warmup import run_warmup

    cfg = WarmupConfig(fraction=1.0, seed=seed, **(warmup_overrides or {}))
    dtype = parse_dtype(cfg.dtype, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    losses = {"base model": heldout_loss(load_causal_lm(model_name, dtype=dtype), tokenizer, heldout)}
    for name, sel in selections.items():
        model = load_causal_lm(model_name, dtype=dtype)
        run_warmup(model, [pool[i] for i in sel], tokenizer, cfg,
                   os.path.join(out_dir, "downstream", name.replace(" ", "_")))
        losses[name] = heldout_loss(model, tokenizer, heldout)
        logger.info("downstream %s: held-out loss %.4f", name, losses[name])
    share = {name: sum(1 for i in sel if pool[i].meta.get("family") == family) / max(1, len(sel))
             for name, sel in selections.items()}
    return {"family": family, "train_size": {n: len(s) for n, s in selections.items()},
            "heldout_size": len(heldout), "losses": losses, "family_share_of_training_set": share,
            "warmup_config": {k: v for k, v in cfg.__dict__.items() if k != "target_modules"}}
