"""The whole job, stage by stage: data -> forward/capture -> saliency -> fingerprints -> scoring
-> selection. The CLI is a thin layer over these functions; other TRIM frontends can call them
directly."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from trim_fast.data import Example, Tokenized, tokenize_example


@dataclass
class SelectionConfig:
    """Every knob of SPEC sections 1-4, with its default."""

    layers: int = 6
    w_row: float = 0.5
    w_col: float = 0.5
    scope: str = "all"
    fallback: str = "nearest"
    fallback_penalty: float = 0.9
    idf: str = "pool"
    w_mean: float = 0.5
    w_max: float = 0.5
    w_coverage: float = 0.05
    fraction: float = 0.05
    k: int | None = None
    combine: str = "max"
    max_length: int = 2048
    max_tokens: int = 8192  # token budget of one forward batch (padded B x N)
    saliency: str = "auto"  # attention_saliency backend, or "reference" (eager output_attentions)
    seed: int = 0

    def __post_init__(self):
        if self.idf not in ("pool", "none"):
            raise ValueError(f"idf must be 'pool' or 'none', got {self.idf!r}")
        if self.combine not in ("max", "mean"):
            raise ValueError(f"combine must be 'max' or 'mean', got {self.combine!r}")
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if self.max_length < 2 or self.max_tokens < self.max_length:
            raise ValueError(f"need 2 <= max_length <= max_tokens; got max_length={self.max_length}, "
                             f"max_tokens={self.max_tokens}")

    def bank_params(self) -> dict:
        return {k: getattr(self, k) for k in ("layers", "w_row", "w_col", "scope", "max_length")}


class Progress:
    """tqdm over tokens, with tokens/s; silent when ``enabled`` is False."""

    def __init__(self, total_tokens: int, desc: str, enabled: bool = True):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_tokens, desc=desc, unit="tok", unit_scale=True,
                            dynamic_ncols=True, leave=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def tokenize_examples(tokenizer, examples: Sequence[Example], cfg: SelectionConfig,
                      progress: bool = True) -> list[Tokenized]:
    out = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples), desc="tokenising", unit="ex", dynamic_ncols=True)
    for ex in examples:
        out.append(tokenize_example(tokenizer, ex, scope=cfg.scope, max_length=cfg.max_length))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def pad_batch(items: Sequence[Tokenized], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``counted`` for a batch."""
    n = max(len(t.ids) for t in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    counted = torch.zeros((len(items), n), dtype=torch.bool)
    for b, t in enumerate(items):
        ids[b, : len(t.ids)] = torch.tensor(t.ids, dtype=torch.long)
        mask[b, : len(t.ids)] = 1
        counted[b, : len(t.ids)] = torch.tensor(t.counted, dtype=torch.bool)
    return ids.to(device), mask.to(device), counted.to(device)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def build_bank(model, tokenizer, tokenized: Sequence[Tokenized], cfg: SelectionConfig, *,
               meta: dict, progress: bool = True):
    """SPEC 2: one fingerprint bank from the target examples of one task."""
    from trim_fast.capture import capture_reference, capture_saliency, token_budget_batches
    from trim_fast.fingerprints import FingerprintAccumulator

    if len(tokenized) == 0:
        raise ValueError("empty target set: a task needs at least one target example")
    if sum(sum(t.counted) for t in tokenized) == 0:
        raise ValueError(f"the target set has no counted tokens under scope={cfg.scope!r}")
    device = _model_device(model)
    acc = None
    bar = Progress(sum(len(t.ids) for t in tokenized), "fingerprinting", progress)
    for batch in token_budget_batches([len(t.ids) for t in tokenized], cfg.max_tokens):
        ids, mask, counted = pad_batch([tokenized[i] for i in batch], tokenizer.pad_token_id, device)
        kw = dict(layers=cfg.layers, w_row=cfg.w_row, w_col=cfg.w_col)
        if cfg.saliency == "reference":
            cap = capture_reference(model, ids, mask, **kw)
        else:
            cap = capture_saliency(model, ids, mask, backend=cfg.saliency, **kw)
        if acc is None:
            acc = FingerprintAccumulator(cap.hidden.shape[-1])
        acc.add(cap.hidden[counted], ids[counted], cap.alpha[counted])
        bar.update(int(mask.sum()))
    bar.close()
    return acc.finish(dict(meta, **cfg.bank_params()))


@dataclass
class PoolScores:
    """Per pool example and task: ``[T, P]`` tensors, and the tasks' names."""

    tasks: list[str]
    score: torch.Tensor
    mean: torch.Tensor
    max: torch.Tensor
    coverage: torch.Tensor
    n_scored: torch.Tensor
    n_matched: torch.Tensor
    seconds: float = 0.0
    tokens: int = 0


def pool_idf(tokenized: Sequence[Tokenized], vocab_size: int, cfg: SelectionConfig):
    """``idf`` table ``[V]`` over the counted tokens of the pool, or ``None`` for ``idf=none``."""
    if cfg.idf == "none":
        return None
    from trim_fast.scoring import DocumentFrequency

    df = DocumentFrequency()
    for t in tokenized:
        df.update([i for i, c in zip(t.ids, t.counted) if c])
    return df.idf(vocab_size)


def score_pool(model, tokenizer, tokenized: Sequence[Tokenized], banks: dict, cfg: SelectionConfig,
               *, idf_table=None, progress: bool = True) -> PoolScores:
    """SPEC 3 for every pool example against every task bank; one forward per batch."""
    from trim_fast.capture import encode_last_hidden, token_budget_batches
    from trim_fast.ops.token_match import match_and_pool

    device = _model_device(model)
    tasks = list(banks)
    p = len(tokenized)
    out = {k: torch.full((len(tasks), p), float("nan")) for k in ("score", "mean", "max", "coverage")}
    counts = {k: torch.zeros((len(tasks), p), dtype=torch.long) for k in ("n_scored", "n_matched")}
    if idf_table is not None:
        idf_table = idf_table.to(device)
    bar = Progress(sum(len(t.ids) for t in tokenized), "scoring", progress)
    t0, tokens = time.perf_counter(), 0
    for batch in token_budget_batches([len(t.ids) for t in tokenized], cfg.max_tokens):
        ids, mask, counted = pad_batch([tokenized[i] for i in batch], tokenizer.pad_token_id, device)
        hidden = encode_last_hidden(model, ids, mask)
        index = torch.tensor(batch, dtype=torch.long)
        for t_i, task in enumerate(tasks):
            pooled = match_and_pool(hidden, ids, counted, banks[task], idf=idf_table,
                                    fallback=cfg.fallback, fallback_penalty=cfg.fallback_penalty,
                                    w_mean=cfg.w_mean, w_max=cfg.w_max, w_coverage=cfg.w_coverage)
            for k in out:
                out[k][t_i, index] = getattr(pooled, k).float().cpu()
            for k in counts:
                counts[k][t_i, index] = getattr(pooled, k).long().cpu()
        n_tok = int(mask.sum())
        tokens += n_tok
        bar.update(n_tok)
    bar.close()
    return PoolScores(tasks=tasks, **out, **counts, seconds=time.perf_counter() - t0, tokens=tokens)


@dataclass
class Selection:
    indices: list[int]  # pool indices, best first
    combined: torch.Tensor  # [P] combined score
    k: int
    unscored: list[int] = field(default_factory=list)  # examples with no scored token (-inf)


def select(scores: PoolScores, cfg: SelectionConfig) -> Selection:
    """SPEC 4: combine task scores, keep the top k (ties to the lower pool index)."""
    from trim_fast.selection import combine_tasks, num_selected, select_top_k

    combined = combine_tasks(scores.score, cfg.combine)
    k = num_selected(combined.shape[0], fraction=cfg.fraction, k=cfg.k)
    idx = select_top_k(combined, k).tolist()
    unscored = [i for i, s in enumerate(combined.tolist()) if s == float("-inf")]
    return Selection(indices=idx, combined=combined, k=k, unscored=unscored)


def selection_name(cfg: SelectionConfig) -> str:
    """LESS's file name for a coreset: ``top_p0.05.jsonl``, or ``top_k{k}.jsonl``."""
    if cfg.k is not None:
        return f"top_k{cfg.k}.jsonl"
    return f"top_p{cfg.fraction:g}.jsonl"


def config_dict(cfg: SelectionConfig) -> dict:
    d = asdict(cfg)
    d["k_resolved"] = None
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
