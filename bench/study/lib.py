"""Scoring variants of the study (issue 14) from the cache of ``bench/study/cache.py``.

Everything here works on the counted tokens of the pool and of the targets at one layer, without
the model. Notation: ``P [Tp, d]`` pool token states, ``pid [Tp]`` their token ids, ``pex [Tp]``
their example index; ``T [Tt, d]`` target token states of one task (family), ``tid``, ``alpha``.

Pool statistics (a mean state ``mu``, per-token-id means ``g``) come from a *seeded sample* of the
pool (``stat_sample``), as a production scorer would get them from one pre-pass; the IDF comes from
the whole pool's token ids (a tokenisation pass, as the shipped scorer does today).
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass

import torch

CACHE_ROOT = "/tmp/study-cache"

# The demo pool and the hard pool have three tasks in common under different names; in a mixed
# pool, an example of the other name is relevant too.
_SAME = (("doc_explain", "python_docs"), ("unit_convert", "unit_conversion"),
         ("unit_check", "conversion_check"))
SAME_TASK = {a: (b,) for a, b in _SAME} | {b: (a,) for a, b in _SAME}


# ---------------------------------------------------------------------------------------------
# the cache
# ---------------------------------------------------------------------------------------------


class Cache:
    def __init__(self, name: str):
        self.name = name
        self.dir = os.path.join(CACHE_ROOT, name)
        meta = torch.load(os.path.join(self.dir, "meta.pt"), weights_only=False)
        self.meta = meta
        self.depth = meta["depth"]
        self.tasks = meta["task_families"]
        p, t = meta["pool"], meta["targets"]
        self.families = p["families"]
        self.n = len(self.families)
        self.texts = p["texts"]
        self.target_texts = t["texts"]
        self.pid = torch.cat([ids[c] for ids, c in zip(p["ids"], p["counted"])])
        self.presp = torch.cat(p["response"])
        self.pex = torch.cat([torch.full((int(c.sum()),), i, dtype=torch.long)
                              for i, c in enumerate(p["counted"])])
        self.tid = torch.cat([ids[c] for ids, c in zip(t["ids"], t["counted"])])
        self.tresp = torch.cat(t["response"])
        self.tex = torch.cat([torch.full((int(c.sum()),), i, dtype=torch.long)
                              for i, c in enumerate(t["counted"])])
        self.tfam = [t["families"][i] for i in self.tex.tolist()]
        self.target_families = t["families"]
        self.lengths = torch.tensor([ids.numel() for ids in p["ids"]])
        self.counted_lengths = torch.bincount(self.pex, minlength=self.n)
        self.saliency = torch.load(os.path.join(self.dir, "saliency.pt"), weights_only=False)
        self._layers: dict = {}
        # SPEC idf over the whole pool, scope all
        vocab = int(max(self.pid.max(), self.tid.max())) + 1
        df = torch.zeros(vocab, dtype=torch.float64)
        pairs = torch.unique(self.pex * vocab + self.pid)
        df.index_add_(0, pairs % vocab, torch.ones(pairs.numel(), dtype=torch.float64))
        self.idf_table = (torch.log((1 + self.n) / (1 + df)) + 1).float()
        # a task's relevant families: itself, plus the same task under another name when two
        # pools are mixed (bench/study/combine.py)
        present = set(self.families)
        self.relevant = {f: ({f} | set(SAME_TASK.get(f, ()))) & present for f in self.tasks}
        self.family_size = {f: sum(1 for x in self.families if x in self.relevant[f]) for f in self.tasks}

    def layer(self, l) -> tuple[torch.Tensor, torch.Tensor]:
        key = "final" if l in ("final", self.depth) else f"{int(l):02d}"
        if key not in self._layers:
            if len(self._layers) > 6:
                self._layers.pop(next(iter(self._layers)))
            x = torch.load(os.path.join(self.dir, f"layer_{key}.pt"))
            self._layers[key] = (x["pool"].float(), x["targets"].float())
        return self._layers[key]

    def task_mask(self, task) -> torch.Tensor:
        return torch.tensor([f == task for f in self.tfam])

    def alpha(self, L=6, w_row=0.5, w_col=0.5) -> torch.Tensor:
        L = self.depth if L == "all" else L
        s = self.saliency[L]
        return w_row * s["row"] + w_col * s["col"]

    def sample_examples(self, size, seed=0) -> torch.Tensor:
        """Seeded sample of pool example indices (the statistics pre-pass)."""
        if size is None or size >= self.n:
            return torch.arange(self.n)
        return torch.tensor(sorted(random.Random(seed).sample(range(self.n), size)))

    def sample_tokens(self, size, seed=0) -> torch.Tensor:
        ex = torch.zeros(self.n, dtype=torch.bool)
        ex[self.sample_examples(size, seed)] = True
        return ex[self.pex]


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def top_k(scores: torch.Tensor, k: int) -> list[int]:
    """Top ``k`` by score, ties to the lower index, -inf/NaN never selected (SPEC 4)."""
    s = scores.double().clone()
    s[torch.isnan(s)] = float("-inf")
    order = sorted(range(s.numel()), key=lambda i: (-s[i].item(), i))
    return [i for i in order[:k] if s[i] != float("-inf")]


def precision(scores, families, relevant, k) -> float:
    sel = top_k(scores, k)
    return sum(1 for i in sel if families[i] in relevant) / k


def num_selected(n, fraction=0.05) -> int:
    return max(1, math.floor(fraction * n + 0.5))


def evaluate(cache: Cache, scores_per_task: dict) -> dict:
    """Per task P@5% and P@|family|, their mean and worst."""
    k5 = num_selected(cache.n)
    rows = {}
    for task, s in scores_per_task.items():
        rel = cache.relevant[task]
        rows[task] = (precision(s, cache.families, rel, k5),
                      precision(s, cache.families, rel, cache.family_size[task]))
    p5 = [v[0] for v in rows.values()]
    pf = [v[1] for v in rows.values()]
    return {"per_task": rows, "mean5": sum(p5) / len(p5), "min5": min(p5),
            "meanF": sum(pf) / len(pf), "minF": min(pf)}


def random_eval(cache: Cache, seeds=range(10)) -> dict:
    out = {}
    for task in cache.tasks:
        k5, kf = num_selected(cache.n), cache.family_size[task]
        p5 = pf = 0.0
        for s in seeds:
            r = random.Random(s)
            rel = cache.relevant[task]
            p5 += sum(cache.families[i] in rel for i in r.sample(range(cache.n), k5)) / k5
            pf += sum(cache.families[i] in rel for i in r.sample(range(cache.n), kf)) / kf
        out[task] = (p5 / len(seeds), pf / len(seeds))
    p5 = [v[0] for v in out.values()]
    pf = [v[1] for v in out.values()]
    return {"per_task": out, "mean5": sum(p5) / len(p5), "min5": min(p5),
            "meanF": sum(pf) / len(pf), "minF": min(pf)}


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def seg_sum(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros((n,) + values.shape[1:], dtype=values.dtype)
    return out.index_add_(0, index, values)


def seg_max(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.full((n,), float("-inf"), dtype=values.dtype)
    return out.scatter_reduce_(0, index, values, "amax", include_self=True)


def mean_state(P: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return (P if mask is None else P[mask]).mean(0)


def pooled_vectors(H: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of the (already transformed) token states of each example."""
    s = seg_sum(H, index, n)
    c = torch.bincount(index, minlength=n).clamp_min(1)
    return s / c[:, None]


def mean_cosine(cache: Cache, l, *, centre: bool, stat_size=None, stat_seed=0) -> dict:
    """Sample-level baseline: cos of each example's mean counted state to the centroid of the
    targets' unit mean states; ``centre`` subtracts the pool's mean token state first."""
    P, T = cache.layer(l)
    mu = mean_state(P, cache.sample_tokens(stat_size, stat_seed)) if centre else torch.zeros(P.shape[1])
    pv = unit(pooled_vectors(P - mu, cache.pex, cache.n))
    tv = unit(pooled_vectors(T - mu, cache.tex, len(cache.target_texts)))
    out = {}
    tf = cache.target_families
    for task in cache.tasks:
        rows = [i for i, f in enumerate(tf) if f == task]
        c = unit(tv[rows].mean(0))
        out[task] = pv @ c
    return out


def bm25(cache: Cache, k1=1.5, b=0.75) -> dict:
    from trim_fast.evaluation.metrics import bm25_scores

    tf = cache.target_families
    return {task: bm25_scores(cache.texts, [t for t, f in zip(cache.target_texts, tf) if f == task],
                              k1=k1, b=b).float()
            for task in cache.tasks}


@dataclass
class Bank:
    classes: torch.Tensor  # [C] token ids
    F: torch.Tensor  # [C, d] unit fingerprints
    mean: torch.Tensor  # [C, d] alpha-weighted mean of unit states (not normalised)
    row_of: torch.Tensor  # [V] row of each id or -1


def build_bank(Th: torch.Tensor, tid: torch.Tensor, alpha: torch.Tensor, vocab: int) -> Bank:
    """SPEC 2 on (transformed, unit) target states ``Th``."""
    classes, inv = torch.unique(tid, return_inverse=True)
    S = seg_sum(alpha[:, None].double() * Th.double(), inv, classes.numel())
    mass = seg_sum(alpha.double(), inv, classes.numel())
    keep = S.norm(dim=1) >= 1e-6
    classes, S, mass = classes[keep], S[keep], mass[keep]
    row_of = torch.full((vocab,), -1, dtype=torch.long)
    row_of[classes] = torch.arange(classes.numel())
    return Bank(classes, unit(S).float(), (S / mass[:, None]).float(), row_of)


def token_match(Ph: torch.Tensor, pid: torch.Tensor, bank: Bank, *, lam=0.9, fallback="nearest",
                contrast: torch.Tensor | None = None, contrast_mode="diff"):
    """Per pool token: score ``s``, ``matched``, ``scored`` (SPEC 3), on unit states ``Ph``.

    ``contrast`` ``[C, d]``: the pool's per-class mean unit state ``g_t`` (aligned with the bank);
    ``diff`` mode scores ``cos(h, f_t) - cos(h, g_t / |g_t|)``, ``cos`` mode scores
    ``cos(h - g_t, m_t - g_t)`` with ``m_t`` the target's alpha-weighted mean unit state."""
    rows = bank.row_of[pid.clamp_max(bank.row_of.numel() - 1)]
    rows = torch.where(pid < bank.row_of.numel(), rows, torch.full_like(rows, -1))
    matched = rows >= 0
    r = rows.clamp_min(0)
    s = torch.zeros(Ph.shape[0])
    if contrast is None:
        s_m = (Ph * bank.F[r]).sum(1)
    elif contrast_mode == "diff":
        s_m = (Ph * bank.F[r]).sum(1) - (Ph * unit(contrast[r])).sum(1)
    elif contrast_mode == "cos":
        s_m = (unit(Ph - contrast[r]) * unit(bank.mean[r] - contrast[r])).sum(1)
    else:
        raise ValueError(contrast_mode)
    s = torch.where(matched, s_m, s)
    scored = matched.clone()
    if fallback == "nearest":
        um = ~matched
        if um.any():
            near = torch.zeros(int(um.sum()))
            idx = um.nonzero().squeeze(1)
            for a in range(0, idx.numel(), 8192):
                part = idx[a:a + 8192]
                near[a:a + 8192] = (Ph[part] @ bank.F.T).max(1).values
            s[idx] = (1 - lam) * near
        scored[:] = True
    elif fallback == "zero":
        scored[:] = True
    elif fallback != "skip":
        raise ValueError(fallback)
    return s, matched, scored


def pool_scores(s, matched, scored, pex, n, weights=None, w_mean=0.5, w_max=0.5, w_cov=0.05,
                cov_counted=False):
    """SPEC 3 pooling per example: weighted mean, max, coverage; -inf with nothing scored.
    ``cov_counted``: coverage = matched / counted tokens (instead of matched / scored, which is
    always 1 when unmatched tokens are skipped)."""
    w = torch.ones_like(s) if weights is None else weights
    w = torch.where(scored, w, torch.zeros_like(w))
    num = seg_sum((w * s).double(), pex, n)
    den = seg_sum(w.double(), pex, n)
    mean = (num / den.clamp_min(1e-30)).float()
    mx = seg_max(torch.where(scored, s, torch.full_like(s, float("-inf"))), pex, n)
    n_sc = seg_sum(scored.double(), pex, n)
    den_cov = seg_sum(torch.ones_like(s).double(), pex, n) if cov_counted else n_sc
    cov = (seg_sum((matched & scored).double(), pex, n) / den_cov.clamp_min(1)).float()
    total = w_mean * mean + w_max * torch.where(torch.isinf(mx), torch.zeros_like(mx), mx) + w_cov * cov
    total = torch.where(n_sc > 0, total, torch.full_like(total, float("-inf")))
    return total, mean, mx, cov


# ---------------------------------------------------------------------------------------------
# the token-level selector with every knob of the study
# ---------------------------------------------------------------------------------------------

DEFAULTS = dict(layer="final", centre=False, L=6, w_row=0.5, w_col=0.5, uniform=False, idf=True,
                lam=0.9, fallback="nearest", w_mean=0.5, w_max=0.5, w_cov=0.05, scope="all",
                contrast=None, contrast_mode="diff", contrast_prior=0.0, stat_size=None, stat_seed=0,
                hybrid=0.0, hybrid_layer=None, hybrid_centre=True, whiten=False, cov_counted=False)


def transform_states(cache: Cache, P, T, opts):
    """Centre (by the sample mean) or whiten (sample mean + diagonal std) the raw states."""
    sample = cache.sample_tokens(opts["stat_size"], opts["stat_seed"])
    if opts["whiten"]:
        mu = P[sample].mean(0)
        sd = P[sample].std(0).clamp_min(1e-6)
        return (P - mu) / sd, (T - mu) / sd
    if opts["centre"]:
        mu = P[sample].mean(0)
        return P - mu, T - mu
    return P, T


def token_selector(cache: Cache, **over) -> dict:
    """Scores of every pool example for every task under the options ``over`` (see DEFAULTS)."""
    opts = dict(DEFAULTS, **over)
    unknown = set(over) - set(DEFAULTS)
    if unknown:
        raise ValueError(unknown)
    P, T = cache.layer(opts["layer"])
    P, T = transform_states(cache, P, T, opts)
    Ph, Th = unit(P), unit(T)
    vocab = cache.idf_table.numel()
    if opts["uniform"]:
        alpha_all = torch.ones(T.shape[0])
    else:
        alpha_all = cache.alpha(opts["L"], opts["w_row"], opts["w_col"])
    if opts["scope"] == "response":
        pkeep, tkeep = cache.presp, cache.tresp
    elif opts["scope"] == "prompt":
        pkeep, tkeep = ~cache.presp, ~cache.tresp
    else:
        pkeep, tkeep = torch.ones_like(cache.presp), torch.ones_like(cache.tresp)
    sample = cache.sample_tokens(opts["stat_size"], opts["stat_seed"]) & pkeep
    hybrid = None
    if opts["hybrid"]:
        hl = opts["hybrid_layer"] if opts["hybrid_layer"] is not None else opts["layer"]
        hybrid = mean_cosine(cache, hl, centre=opts["hybrid_centre"], stat_size=opts["stat_size"],
                             stat_seed=opts["stat_seed"])
    out = {}
    for task in cache.tasks:
        tm = cache.task_mask(task) & tkeep
        bank = build_bank(Th[tm], cache.tid[tm], alpha_all[tm], vocab)
        contrast = None
        if opts["contrast"]:
            contrast = per_class_mean(Ph[sample], cache.pid[sample], bank, prior=opts["contrast_prior"],
                                      glob=Ph[sample].mean(0))
        s, matched, scored = token_match(Ph[pkeep], cache.pid[pkeep], bank, lam=opts["lam"],
                                         fallback=opts["fallback"], contrast=contrast,
                                         contrast_mode=opts["contrast_mode"])
        w = cache.idf_table[cache.pid[pkeep]] if opts["idf"] else None
        total, *_ = pool_scores(s, matched, scored, cache.pex[pkeep], cache.n, w, opts["w_mean"],
                                opts["w_max"], opts["w_cov"], opts["cov_counted"])
        if hybrid is not None:
            total = total + opts["hybrid"] * hybrid[task]
        out[task] = total
    return out


def per_class_mean(Ps: torch.Tensor, pids: torch.Tensor, bank: Bank, *, prior: float, glob: torch.Tensor):
    """``g_t``: mean unit state of the sample's occurrences of each bank class; ``prior``
    pseudo-counts of the sample's global mean unit state (classes unseen in the sample get it)."""
    C = bank.classes.numel()
    rows = bank.row_of[pids.clamp_max(bank.row_of.numel() - 1)]
    keep = (pids < bank.row_of.numel()) & (rows >= 0)
    S = seg_sum(Ps[keep].double(), rows[keep], C)
    cnt = torch.bincount(rows[keep], minlength=C).double()
    g = (S + prior * glob.double()) / (cnt + prior).clamp_min(1e-12)[:, None]
    unseen = cnt + prior == 0
    g[unseen] = glob.double()
    return g.float()
