"""Selection quality on a labelled pool: the selectors against baselines, the study's variants,
with and without warmup, and a downstream check.

Every TRIM number here comes from the shipped path, :class:`trim_fast.Selector` with a
:class:`SelectionConfig`: the same fingerprinting, batching, scoring and selection as
``trim-fast select`` (a test checks they are equal bit for bit), so a row of the study is a set
of settings a user can run. The pool's forward passes run once; a :class:`ForwardCache` keeps
their hidden states in memory, so each variant re-scores without a forward. Each target source is
a task; a pool example is relevant to a task when its ``family`` equals the targets' family.

Baselines: random (mean of 10 seeds), BM25 (``bm25s``), and the sample-level cosine: each
example's counted hidden states averaged (:meth:`Selector.embed`), cosine to the centroid of the
targets' averages, at the last layer and at two thirds of the depth, raw and centred by the pool's
mean state. Results are keyed by stable ids (``trim_default``, ``mean_cosine_last`` ...); the
tables show ``LABELS``.
"""
from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Sequence

import torch

from trim_fast.errors import DataError
from trim_fast import ForwardCache
from trim_fast.api import Selector
from trim_fast.data import Example, Records, tokenize_example
from trim_fast.evaluation.metrics import bm25_scores, precision_recall, random_selections
from trim_fast.config import SelectionConfig
from trim_fast.selection import num_selected, select_top_k

logger = logging.getLogger(__name__)

K_FRACTIONS = (0.01, 0.05, 0.10)
RANDOM_SEEDS = tuple(range(10))


def example_text(ex: Example) -> str:
    if ex.text is not None:
        return ex.text
    if ex.messages is not None:
        return "\n".join(m["content"] for m in ex.messages if m.get("content"))
    return ""


def sample_cosine(pool_states: torch.Tensor, target_states: torch.Tensor,
                  center: torch.Tensor | None) -> torch.Tensor:
    """``[P]`` cosine of each example's averaged state to the targets' centroid (after
    subtracting ``center`` from both, when given)."""
    if center is not None:
        pool_states, target_states = pool_states - center, target_states - center
    unit = pool_states / pool_states.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    centroid = target_states.mean(0)
    return unit @ (centroid / centroid.norm().clamp_min(1e-12))


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


def summarize(per_task: dict[str, dict]) -> dict:
    """Mean and worst over the tasks of P@5% and P@|family|."""
    p5 = [m["P@5%"] for m in per_task.values()]
    pf = [m["P@|family|"] for m in per_task.values()]
    return {"mean P@5%": statistics.fmean(p5), "worst P@5%": min(p5),
            "mean P@|family|": statistics.fmean(pf), "worst P@|family|": min(pf)}


# The selectors of the headline table: the default and the paper's scoring, as configs. Results
# are keyed by these stable ids; LABELS gives what the tables and the plot show.
METHODS: dict[str, dict] = {"trim_default": {"method": "matched"}, "trim_paper": {"method": "paper"}}
LABELS = {"trim_default": "TRIM default (matched)", "trim_paper": "TRIM paper", "bm25": "BM25",
          "random": "random", "mean_cosine": "mean-cosine", "base_model": "base model",
          "mean_cosine_last": "mean-cosine, last layer",
          "mean_cosine_last_centred": "mean-cosine, last layer, centred"}


def selector_labels(depth_two_thirds: int) -> dict[str, str]:
    """Every selector id -> its display label (the two-thirds layer named by its number)."""
    return {**LABELS, "mean_cosine_two_thirds": f"mean-cosine, layer {depth_two_thirds}",
            "mean_cosine_two_thirds_centred": f"mean-cosine, layer {depth_two_thirds}, centred"}

STUDY: list[tuple[str, str, dict]] = [
    # (group, label, SelectionConfig settings): every row is a config a user can run
    ("matched", "default: matched (fallback skip, no idf, centred)", {"method": "matched"}),
    ("matched", "not centred", {"method": "matched", "center": "none"}),
    ("matched", "with pool idf", {"method": "matched", "idf": "pool"}),
    ("matched", "nearest fallback (lambda 0.9)", {"method": "matched", "fallback": "nearest"}),
    ("matched", "coverage weight 0.05", {"method": "matched", "w_coverage": 0.05}),
    ("matched", "mean only (w_max 0)", {"method": "matched", "w_max": 0.0}),
    ("matched", "max only (w_mean 0)", {"method": "matched", "w_mean": 0.0}),
    ("matched", "scope response", {"method": "matched", "scope": "response"}),
    ("matched", "scope prompt", {"method": "matched", "scope": "prompt"}),
    ("matched", "L=1", {"method": "matched", "layers": 1}),
    ("matched", "L=all", {"method": "matched", "layers": 10_000}),
    ("matched", "alpha: row only", {"method": "matched", "w_row": 1.0, "w_col": 0.0}),
    ("matched", "alpha: column only", {"method": "matched", "w_row": 0.0, "w_col": 1.0}),
    ("matched", "mean state of 16 pool examples", {"method": "matched", "center_sample": 16}),
    ("matched", "mean state of 512 pool examples", {"method": "matched", "center_sample": 512}),
    ("paper", "paper (SPEC defaults)", {"method": "paper"}),
    ("paper", "centred", {"method": "paper", "center": "pool"}),
    ("paper", "idf none", {"method": "paper", "idf": "none"}),
    ("paper", "fallback skip", {"method": "paper", "fallback": "skip"}),
    ("paper", "lambda 0", {"method": "paper", "fallback_penalty": 0.0}),
    ("paper", "lambda 0.5", {"method": "paper", "fallback_penalty": 0.5}),
    ("paper", "lambda 1 (unseen score 0)", {"method": "paper", "fallback_penalty": 1.0}),
    ("paper", "pooling: mean", {"method": "paper", "w_mean": 1.0, "w_max": 0.0, "w_coverage": 0.0}),
    ("paper", "pooling: max", {"method": "paper", "w_mean": 0.0, "w_max": 1.0, "w_coverage": 0.0}),
    ("paper", "pooling: mean+max", {"method": "paper", "w_coverage": 0.0}),
    ("paper", "L=1", {"method": "paper", "layers": 1}),
    ("paper", "L=all", {"method": "paper", "layers": 10_000}),
    ("paper", "alpha: row only", {"method": "paper", "w_row": 1.0, "w_col": 0.0}),
    ("paper", "alpha: column only", {"method": "paper", "w_row": 0.0, "w_col": 1.0}),
    ("paper", "scope response", {"method": "paper", "scope": "response"}),
    ("paper", "scope prompt", {"method": "paper", "scope": "prompt"}),
]


def task_scores(selector: Selector, pool, targets: dict, cache: ForwardCache) -> torch.Tensor:
    """``[T, P]``: every task's scores, through the shipped path."""
    banks = selector.fingerprint(targets, pool=pool, forward_cache=cache)
    return selector.score(pool, banks, forward_cache=cache).score


def run_quality(selector: Selector, pool: Records, targets: dict[str, Records], *,
                study: bool = True, checks: bool = True) -> dict:
    """Per task: each selector's precision and recall at k (the methods, the baselines); the
    study's rows (mean and worst over the tasks)."""
    t0 = time.perf_counter()
    base_cfg = selector.config
    cache = ForwardCache()
    examples = list(pool)
    families = [e.meta.get("family") for e in examples]
    if not any(families):
        raise DataError("eval needs a labelled pool: records with a 'family' field")

    def variant(settings: dict) -> Selector:
        cfg = SelectionConfig(**{**_run_settings(base_cfg), **settings})
        return Selector(selector.model, selector.tokenizer, cfg)

    method_scores, runs = {}, {}
    for name, settings in METHODS.items():
        sel = variant(settings)
        banks = sel.fingerprint(targets, pool=pool, forward_cache=cache)
        runs[name] = (sel, banks, sel.score(pool, banks, forward_cache=cache))
        method_scores[name] = runs[name][2].score
    default, banks, scores = runs[next(iter(METHODS))]  # the first is the default
    lengths = scores.n_tokens.tolist()
    fam_of = {task: banks[task].meta.get("family") for task in targets}

    depth = int(getattr(selector.model.config, "num_hidden_layers", 0) or 0)
    two_thirds = max(1, round(2 * depth / 3))
    layers = (-1, two_thirds)
    states = {layer: default.embed(pool, layer=layer) for layer in layers}
    target_states = {task: {layer: default.embed(targets[task], layer=layer) for layer in layers}
                     for task in targets}
    centers = {layer: states[layer].mean(0) for layer in states}  # the pool's mean example state
    texts = [example_text(e) for e in examples]
    k5 = num_selected(len(examples), fraction=0.05)
    per_family, selections = {}, {}
    for t_i, task in enumerate(targets):
        fam = fam_of[task]
        target_examples = list(targets[task])
        rows = {name: evaluate_selector(s[t_i], families, lengths, fam)
                for name, s in method_scores.items()}
        for layer, where in ((-1, "last"), (two_thirds, "two_thirds")):
            for centred in (False, True):
                cos = sample_cosine(states[layer], target_states[task][layer],
                                    centers[layer] if centred else None)
                rows[f"mean_cosine_{where}{'_centred' if centred else ''}"] = \
                    evaluate_selector(cos, families, lengths, fam)
                if layer == -1 and not centred:
                    selections.setdefault(task, {})["mean_cosine"] = select_top_k(cos, k5).tolist()
        rows["bm25"] = evaluate_selector(bm25_scores(texts, [example_text(e) for e in target_examples]),
                                         families, lengths, fam)
        rows["random"] = evaluate_selector(None, families, lengths, fam)
        per_family[task] = {"family": fam, "family_size": sum(f == fam for f in families),
                            "selectors": rows}
        selections[task].update({name: select_top_k(s[t_i], k5).tolist()
                                 for name, s in method_scores.items()})
        logger.info("%s: " + ", ".join(f"{LABELS.get(n, n)} %.3f" for n in rows), task,
                    *(rows[n]["P@|family|"] for n in rows))
    selectors = list(next(iter(per_family.values()))["selectors"])
    summary = {name: summarize({t: f["selectors"][name] for t, f in per_family.items()})
               for name in selectors}
    result = {"pool_size": len(examples), "families": per_family, "summary": summary,
              "labels": selector_labels(two_thirds),
              "config": _run_settings(base_cfg), "depth": depth, "selections": selections,
              "trim_scores": scores.score.tolist()}
    if checks:
        result["checks"] = run_checks(selector, pool, targets, cache)
    if study:
        table = []
        for group, label, settings in STUDY:
            ts = task_scores(variant(settings), pool, targets, cache)
            metrics = {task: evaluate_selector(ts[t_i], families, lengths, fam_of[task])
                       for t_i, task in enumerate(targets)}
            table.append({"id": study_id(settings), "group": group, "setting": label, "config": settings,
                          **summarize(metrics)})
        result["study"] = table
        logger.info("%d study rows done", len(STUDY))
    result["seconds"] = time.perf_counter() - t0
    return result


def study_id(settings: dict) -> str:
    """A study row's stable id: its settings (``method=matched,center=none``)."""
    return ",".join(f"{k}={v}" for k, v in settings.items())


def llama_factory_rows(tokenizer, examples: Sequence[Example]) -> list[dict]:
    """Chat examples as LLaMA-Factory (and DataFlex) write supervised rows: ``input_ids`` of the
    rendered conversation, ``labels`` -100 on the prompt (template, default system prompt, user
    turn, assistant header) and the ids on the answer and the template's end-of-turn text after
    it (``<|im_end|>`` and its newline with SmolLM2). The prompt and the answer are tokenised
    apart, as LLaMA-Factory does."""
    rows = []
    for ex in examples:
        msgs = ex.messages
        if not msgs or msgs[-1]["role"] != "assistant":
            raise ValueError(f"{ex.source}:{ex.line}: a LLaMA-Factory row needs a chat ending with "
                             "an assistant turn")
        prompt = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(msgs, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template's generation prompt is not a prefix of the chat")
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        rows.append({"id": ex.id, "family": ex.meta.get("family"), "input_ids": p + a,
                     "labels": [-100] * len(p) + a})
    return rows


def coreset_coverage(task_scores: torch.Tensor, families: Sequence, task_families: Sequence,
                     combine: str, fraction: float = 0.05) -> dict:
    """The coreset one multi-task run writes (tasks combined by ``combine``, top ``fraction``):
    how many records of each task's family it holds, the worst family's count against its fair
    share ``k / tasks``, and its precision (records of any task's family)."""
    from trim_fast.selection import choose

    choice = choose(task_scores, combine=combine, fraction=fraction)
    counts = {f: sum(1 for i in choice.indices if families[i] == f) for f in task_families}
    fair = choice.k / len(task_families)
    return {"k": choice.k, "counts": counts, "worst share of fair": min(counts.values()) / fair,
            "precision": sum(counts.values()) / max(1, len(choice.indices))}


def run_checks(selector: Selector, pool: Records, targets: dict[str, Records],
               cache: ForwardCache) -> dict:
    """Issue 18's checks: the same pool as LLaMA-Factory rows (labels on the template's
    end-of-turn tokens) against chat records, for each method and for the DataFlex plug-in's
    two scopes; and the coreset a multi-task run writes, per ``combine`` mode."""
    from trim_fast.config import COMBINE_MODES
    from trim_fast.data import record_to_example

    examples = list(pool)
    families = [e.meta.get("family") for e in examples]
    target_lists = {t: list(r) for t, r in targets.items()}
    task_families = [target_lists[t][0].meta.get("family") for t in target_lists]

    def as_rows(exs, drop_labels=False):
        rows = llama_factory_rows(selector.tokenizer, exs)
        if drop_labels:  # DataFlex's scope 'all': every token of the row counts
            rows = [{k: v for k, v in r.items() if k != "labels"} for r in rows]
        return [record_to_example(r, "tokens", source=e.source, line=e.line)
                for r, e in zip(rows, exs)]

    def p_family(scores: torch.Tensor) -> dict:
        per = {}
        for t_i, fam in enumerate(task_families):
            k = sum(1 for f in families if f == fam)
            per[fam] = precision_recall(select_top_k(scores[t_i], k).tolist(), families, fam)[0]
        return {"mean P@|family|": statistics.fmean(per.values()),
                "worst P@|family|": min(per.values()), "per family": per}

    rows = {scope: (as_rows(examples, scope == "all"),
                    {t: as_rows(v, scope == "all") for t, v in target_lists.items()})
            for scope in ("response", "all")}
    out: dict = {"pre-tokenized rows": {}, "coreset": {}}
    for name, settings in METHODS.items():
        for scope in ("response", "all"):
            cfg = SelectionConfig(**{**_run_settings(selector.config), **settings, "scope": scope})
            sel = Selector(selector.model, selector.tokenizer, cfg)
            chat = task_scores(sel, examples, target_lists, cache)
            row_pool, row_targets = rows[scope]
            pre = task_scores(sel, row_pool, row_targets, cache)
            out["pre-tokenized rows"].setdefault(name, {})[scope] = {
                "chat records": p_family(chat), "LLaMA-Factory rows": p_family(pre)}
            if scope == "all":
                out["coreset"][name] = {how: coreset_coverage(chat, families, task_families, how)
                                        for how in COMBINE_MODES}
    return out


def _run_settings(cfg: SelectionConfig) -> dict:
    """The settings of a config that are not the method's choices (batching, seed ...), so a
    variant of another method starts from that method's own defaults."""
    keep = ("max_length", "max_tokens", "chunk_size", "seed", "saliency", "center_sample",
            "shared_prefix", "cut_tails", "hidden_layer")
    return {k: getattr(cfg, k) for k in keep}


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
        raise DataError("held-out set has no response tokens")
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
    losses = {"base_model": heldout_loss(load_causal_lm(model_name, dtype=dtype), tokenizer, heldout)}
    for name, sel in selections.items():
        model = load_causal_lm(model_name, dtype=dtype)
        run_warmup(model, [pool[i] for i in sel], tokenizer, cfg,
                   os.path.join(out_dir, "downstream", name))
        losses[name] = heldout_loss(model, tokenizer, heldout)
        logger.info("downstream %s: held-out loss %.4f", name, losses[name])
    share = {name: sum(1 for i in sel if pool[i].meta.get("family") == family) / max(1, len(sel))
             for name, sel in selections.items()}
    return {"family": family, "train_size": {n: len(s) for n, s in selections.items()},
            "heldout_size": len(heldout), "losses": losses, "family_share_of_training_set": share,
            "warmup_config": {k: v for k, v in cfg.__dict__.items() if k != "target_modules"}}
