"""Selection quality on a labelled pool: TRIM against baselines, ablations, a downstream check.

The pool's forward pass runs once; its last hidden states are kept in memory (this is for
evaluation pools of thousands of examples, not for production pools), so every ablation that
changes only fingerprints or pooling re-scores from the cache. Each family's targets are a task;
an example is relevant to a task when its ``family`` field equals the targets' family.
"""
from __future__ import annotations

import collections
import os
import statistics
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from trim_fast.data import Example, tokenize_example
from trim_fast.evaluation.metrics import bm25_scores, precision_recall, random_selections
from trim_fast.pipeline import SelectionConfig

K_FRACTIONS = (0.01, 0.05, 0.10)
RANDOM_SEEDS = tuple(range(10))


@dataclass
class PoolCache:
    """The pool's token ids, counted masks per scope, and last hidden states (one forward)."""

    examples: list[Example]
    ids: list[torch.Tensor]
    counted: dict[str, list[torch.Tensor]]  # scope -> per example
    hidden: list[torch.Tensor]  # per example [n, d], fp32 on CPU
    families: list
    seconds_forward: float


def _log(msg: str) -> None:
    print(f"[trim-fast eval] {msg}", flush=True)


def _text(ex: Example) -> str:
    return ex.text if ex.text is not None else "\n".join(m["content"] for m in ex.messages)


def encode_pool(model, tokenizer, examples: Sequence[Example], cfg: SelectionConfig) -> PoolCache:
    from trim_fast.capture import encode_last_hidden, token_budget_batches
    from trim_fast.pool import pad_batch

    ids, counted = [], {s: [] for s in ("all", "response", "prompt")}
    for ex in examples:
        for scope in counted:
            t = tokenize_example(tokenizer, ex, scope=scope, max_length=cfg.max_length)
            counted[scope].append(torch.tensor(t.counted, dtype=torch.bool))
        ids.append(torch.tensor(t.ids, dtype=torch.long))
    device = next(model.parameters()).device
    hidden: list[torch.Tensor | None] = [None] * len(examples)
    t0 = time.perf_counter()
    for batch in token_budget_batches([len(x) for x in ids], cfg.max_tokens):
        b_ids, mask, _ = pad_batch([(ids[i], counted["all"][i]) for i in batch],
                                   tokenizer.pad_token_id, device)
        h = encode_last_hidden(model, b_ids, mask).float().cpu()
        for row, i in enumerate(batch):
            hidden[i] = h[row, : ids[i].numel()].clone()
    fams = [e.meta.get("family") for e in examples]
    return PoolCache(list(examples), ids, counted, hidden, fams, time.perf_counter() - t0)  # type: ignore[arg-type]


def target_parts(model, tokenizer, targets: Sequence[Example], cfg: SelectionConfig, layers: int,
                 scope: str):
    """Counted target tokens: hidden ``[M, d]``, ids ``[M]``, row ``Q`` and column ``K`` parts."""
    from trim_fast.capture import capture_saliency
    from trim_fast.pool import pad_batch

    toks = [tokenize_example(tokenizer, ex, scope=scope, max_length=cfg.max_length) for ex in targets]
    rows = [(torch.tensor(t.ids), torch.tensor(t.counted)) for t in toks]
    device = next(model.parameters()).device
    ids, mask, counted = pad_batch(rows, tokenizer.pad_token_id, device)
    cap = capture_saliency(model, ids, mask, layers=layers, w_row=0.5, w_col=0.5,
                           backend=cfg.saliency if cfg.saliency != "reference" else "auto")
    return (cap.hidden[counted].float().cpu(), ids[counted].cpu(), cap.row[counted].cpu(),
            cap.col[counted].cpu())


def score_from_cache(cache: PoolCache, bank, cfg: SelectionConfig, scope: str, idf) -> torch.Tensor:
    """``S`` for every pool example from the cached hidden states."""
    from trim_fast.capture import token_budget_batches
    from trim_fast.ops.token_match import match_and_pool

    out = torch.full((len(cache.ids),), float("nan"))
    for batch in token_budget_batches([x.numel() for x in cache.ids], cfg.max_tokens):
        n = max(cache.ids[i].numel() for i in batch)
        d = cache.hidden[batch[0]].shape[-1]
        hid = torch.zeros(len(batch), n, d)
        ids = torch.zeros(len(batch), n, dtype=torch.long)
        cnt = torch.zeros(len(batch), n, dtype=torch.bool)
        for r, i in enumerate(batch):
            m = cache.ids[i].numel()
            hid[r, :m], ids[r, :m], cnt[r, :m] = cache.hidden[i], cache.ids[i], cache.counted[scope][i]
        pooled = match_and_pool(hid, ids, cnt, bank, idf=idf, fallback=cfg.fallback,
                                fallback_penalty=cfg.fallback_penalty, w_mean=cfg.w_mean,
                                w_max=cfg.w_max, w_coverage=cfg.w_coverage)
        out[torch.tensor(batch)] = pooled.score.float()
    return out


def pool_idf_table(cache: PoolCache, scope: str, vocab: int) -> torch.Tensor:
    from trim_fast.scoring import DocumentFrequency

    df = DocumentFrequency()
    for ids, cnt in zip(cache.ids, cache.counted[scope]):
        df.update(ids[cnt])
    return df.idf(vocab)


def _mean_pooled(hidden: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    v = hidden[counted].mean(0) if counted.any() else hidden.mean(0)
    return v / v.norm().clamp_min(1e-12)


def repsim_scores(cache: PoolCache, target_vectors: torch.Tensor) -> torch.Tensor:
    """Sample-level representation similarity: cosine of each example's mean-pooled last hidden
    state (counted tokens) to the centroid of the targets' mean-pooled states."""
    centroid = target_vectors.mean(0)
    centroid = centroid / centroid.norm()
    pooled = torch.stack([_mean_pooled(h, c) for h, c in zip(cache.hidden, cache.counted["all"])])
    return pooled @ centroid


def _ks(pool_size: int, family_size: int) -> dict[str, int]:
    from trim_fast.selection import num_selected

    ks = {f"{int(f * 100)}%": num_selected(pool_size, fraction=f) for f in K_FRACTIONS}
    ks["|family|"] = family_size
    return ks


def evaluate_selector(scores: torch.Tensor | None, cache: PoolCache, family, *,
                      selections: list[list[int]] | None = None) -> dict:
    """Precision/recall at each k and the mean/median token length of the 5% selection; for a
    random selector pass ``selections`` per k instead of ``scores`` (averaged over seeds)."""
    from trim_fast.selection import select_top_k

    family_size = sum(1 for f in cache.families if f == family)
    out = {}
    for name, k in _ks(len(cache.families), family_size).items():
        if scores is not None:
            sels = [select_top_k(scores, k).tolist()]
        else:
            sels = random_selections(len(cache.families), k, RANDOM_SEEDS)
        pr = [precision_recall(s, cache.families, family) for s in sels]
        out[f"P@{name}"] = sum(p for p, _ in pr) / len(pr)
        out[f"R@{name}"] = sum(r for _, r in pr) / len(pr)
        if name == "5%":
            lengths = [cache.ids[i].numel() for s in sels for i in s]
            out["len_mean@5%"] = statistics.fmean(lengths)
            out["len_median@5%"] = statistics.median(lengths)
    return out


ABLATIONS: list[tuple[str, str, dict]] = [
    # (group, label, overrides of the default TRIM configuration)
    ("layers L", "L=1", {"layers": 1}),
    ("layers L", "L=3", {"layers": 3}),
    ("layers L", "L=6 (default)", {}),
    ("layers L", "L=all", {"layers": 10_000}),
    ("saliency", "row only", {"w_row": 1.0, "w_col": 0.0}),
    ("saliency", "column only", {"w_row": 0.0, "w_col": 1.0}),
    ("saliency", "equal (default)", {}),
    ("saliency", "uniform alpha", {"uniform": True}),
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


def run_quality(model, tokenizer, pool: Sequence[Example], targets: dict[str, list[Example]],
                cfg: SelectionConfig, *, ablations: bool = True,
                progress: Callable[[str], None] = _log) -> dict:
    """The per-family table (TRIM and baselines) and the ablation table (mean over families)."""
    from trim_fast.fingerprints import FingerprintBank

    t0 = time.perf_counter()
    cache = encode_pool(model, tokenizer, pool, cfg)
    progress(f"pool of {len(pool)} encoded in {cache.seconds_forward:.1f}s")
    vocab = len(tokenizer)
    idf = {s: pool_idf_table(cache, s, vocab) for s in ("all", "response", "prompt")}
    fam_of = {task: collections.Counter(e.meta.get("family") for e in ex).most_common(1)[0][0]
              for task, ex in targets.items()}
    depth = model.config.num_hidden_layers
    parts_cache: dict = {}

    def parts(task, layers, scope):
        key = (task, min(layers, depth), scope)
        if key not in parts_cache:
            parts_cache[key] = target_parts(model, tokenizer, targets[task], cfg, min(layers, depth), scope)
        return parts_cache[key]

    def trim_scores(task, over: dict) -> torch.Tensor:
        c = replace(cfg, **{k: v for k, v in over.items() if k != "uniform"})
        h, ids, row, col = parts(task, c.layers, c.scope)
        alpha = torch.ones_like(row) if over.get("uniform") else c.w_row * row + c.w_col * col
        bank = FingerprintBank.build(h, ids, alpha, meta={})
        return score_from_cache(cache, bank, c, c.scope, idf[c.scope] if c.idf == "pool" else None)

    per_family = {}
    from trim_fast.selection import select_top_k

    for task, tgt in targets.items():
        fam = fam_of[task]
        tvec = torch.stack([_mean_pooled(*_target_hidden(model, tokenizer, ex, cfg)) for ex in tgt])
        default_scores = trim_scores(task, {})
        rows = {
            "TRIM": evaluate_selector(default_scores, cache, fam),
            "random": evaluate_selector(None, cache, fam),
            "repsim": evaluate_selector(repsim_scores(cache, tvec), cache, fam),
            "bm25": evaluate_selector(bm25_scores([_text(e) for e in cache.examples],
                                                  [_text(e) for e in tgt]), cache, fam),
        }
        k5 = _ks(len(pool), 0)["5%"]
        per_family[task] = {"family": fam, "family_size": sum(f == fam for f in cache.families),
                            "selectors": rows,
                            "trim_top5": select_top_k(default_scores, k5).tolist()}
        progress(f"{task}: TRIM P@5% {rows['TRIM']['P@5%']:.3f}, random {rows['random']['P@5%']:.3f}, "
                 f"repsim {rows['repsim']['P@5%']:.3f}, bm25 {rows['bm25']['P@5%']:.3f}")
    result = {"pool_size": len(pool), "families": per_family, "config": cfg.__dict__.copy(),
              "model_layers": depth}
    if ablations:
        table = []
        for group, label, over in ABLATIONS:
            p5, pfam = [], []
            for task in targets:
                m = evaluate_selector(trim_scores(task, over), cache, fam_of[task])
                p5.append(m["P@5%"])
                pfam.append(m["P@|family|"])
            table.append({"group": group, "setting": label, "P@5%": statistics.fmean(p5),
                          "P@|family|": statistics.fmean(pfam), "min P@5%": min(p5)})
        result["ablations"] = table
        progress(f"{len(ABLATIONS)} ablations done")
    result["seconds"] = time.perf_counter() - t0
    return result


def _target_hidden(model, tokenizer, ex: Example, cfg: SelectionConfig):
    from trim_fast.capture import encode_last_hidden

    t = tokenize_example(tokenizer, ex, scope="all", max_length=cfg.max_length)
    device = next(model.parameters()).device
    ids = torch.tensor([t.ids], device=device)
    h = encode_last_hidden(model, ids, torch.ones_like(ids))[0].float().cpu()
    return h, torch.tensor(t.counted)


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
        lines += ["", f"Downstream: LoRA fine-tune on {downstream['train_size']} examples, held-out "
                  f"loss on {downstream['heldout_size']} new '{downstream['family']}' examples:", "",
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
    from trim_fast.outputs import atomic_open, write_json

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


def run_downstream(model_name, tokenizer, pool: Sequence[Example], trim_selection: Sequence[int],
                   heldout: Sequence[Example], family: str, out_dir: str, *, seed: int = 0,
                   warmup_overrides: dict | None = None, progress: Callable[[str], None] = _log) -> dict:
    """LoRA fine-tune the model on TRIM's selection and on a seeded random selection of the same
    size; report each one's held-out loss on new examples of the target family, and the base's."""
    import random

    from trim_fast.warmup import WarmupConfig, load_causal_lm, run_warmup

    from trim_fast.models.loading import parse_dtype

    cfg = WarmupConfig(fraction=1.0, seed=seed, **(warmup_overrides or {}))
    dtype = parse_dtype(cfg.dtype, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    k = len(trim_selection)
    random_selection = random.Random(seed).sample(range(len(pool)), k)
    losses = {"base model": heldout_loss(load_causal_lm(model_name, dtype), tokenizer, heldout)}
    for name, sel in (("TRIM 5%", trim_selection), ("random 5%", random_selection)):
        model = load_causal_lm(model_name, dtype)
        run_warmup(model, [pool[i] for i in sel], tokenizer, cfg,
                   os.path.join(out_dir, "downstream", name.split()[0].lower()), progress=False)
        losses[name] = heldout_loss(model, tokenizer, heldout)
        progress(f"downstream {name}: held-out loss {losses[name]:.4f}")
    share = {name: sum(1 for i in sel if pool[i].meta.get("family") == family) / max(1, k)
             for name, sel in (("TRIM 5%", trim_selection), ("random 5%", random_selection))}
    return {"family": family, "train_size": k, "heldout_size": len(heldout), "losses": losses,
            "family_share_of_training_set": share,
            "warmup_config": {k2: v for k2, v in cfg.__dict__.items() if k2 != "target_modules"}}
