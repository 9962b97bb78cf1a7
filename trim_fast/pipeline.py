"""The whole job, stage by stage: data -> forward/capture -> saliency -> fingerprints -> scoring
-> selection. The CLI is a thin layer over these functions; other TRIM frontends can call them
directly."""
from __future__ import annotations

from dataclasses import dataclass, field
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
    chunk_size: int = 4096  # pool examples per resumable shard
    seed: int = 0

    def __post_init__(self):
        if self.idf not in ("pool", "none"):
            raise ValueError(f"idf must be 'pool' or 'none', got {self.idf!r}")
        if self.combine not in ("max", "mean"):
            raise ValueError(f"combine must be 'max' or 'mean', got {self.combine!r}")
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        from trim_fast.reference import FALLBACKS, num_selected

        num_selected(1, fraction=self.fraction, k=self.k)  # bad fraction / k: fail before any work
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")
        if not 0.0 <= self.fallback_penalty <= 1.0:
            raise ValueError(f"fallback penalty (lambda) must be in [0, 1], got {self.fallback_penalty}")
        weights = {"w_row": self.w_row, "w_col": self.w_col, "w_mean": self.w_mean,
                   "w_max": self.w_max, "w_coverage": self.w_coverage}
        negative = {k: v for k, v in weights.items() if not v >= 0}
        if negative:
            raise ValueError(f"weights must be >= 0, got {negative}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.max_length < 2 or self.max_tokens < self.max_length:
            raise ValueError(f"need 2 <= max_length <= max_tokens; got max_length={self.max_length}, "
                             f"max_tokens={self.max_tokens}")

    def bank_params(self) -> dict:
        return {k: getattr(self, k) for k in BANK_FIELDS}

    def scoring_params(self) -> dict:
        """What the score shards depend on (selection knobs are applied later, from the table)."""
        return {k: getattr(self, k) for k in ("scope", "max_length", "max_tokens", "fallback",
                                              "fallback_penalty", "idf", "w_mean", "w_max",
                                              "w_coverage", "chunk_size")}


BANK_FIELDS = ("layers", "w_row", "w_col", "scope", "max_length")


class Progress:
    """tqdm over tokens, with tokens/s; silent when ``enabled`` is False."""

    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "tok"):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total or None, desc=desc, unit=unit, unit_scale=True,
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
    bar = Progress(len(examples), "tokenising", progress, unit="ex")
    for ex in examples:
        out.append(tokenize_example(tokenizer, ex, scope=cfg.scope, max_length=cfg.max_length))
        bar.update(1)
    bar.close()
    return out


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def build_bank(model, tokenizer, tokenized: Sequence[Tokenized], cfg: SelectionConfig, *,
               meta: dict, progress: bool = True):
    """SPEC 2: one fingerprint bank from the target examples of one task."""
    from trim_fast.capture import capture_reference, capture_saliency, token_budget_batches
    from trim_fast.fingerprints import FingerprintAccumulator
    from trim_fast.pool import pad_batch

    if len(tokenized) == 0:
        raise ValueError("empty target set: a task needs at least one target example")
    if sum(sum(t.counted) for t in tokenized) == 0:
        raise ValueError(f"the target set has no counted tokens under scope={cfg.scope!r}")
    device = _model_device(model)
    acc = None
    bar = Progress(sum(len(t.ids) for t in tokenized), "fingerprinting", progress)
    for batch in token_budget_batches([len(t.ids) for t in tokenized], cfg.max_tokens):
        rows = [(torch.tensor(tokenized[i].ids), torch.tensor(tokenized[i].counted)) for i in batch]
        ids, mask, counted = pad_batch(rows, tokenizer.pad_token_id, device)
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
class Selection:
    indices: list[int]  # pool indices, best first
    combined: torch.Tensor  # [P] combined score
    k: int
    unscored: list[int] = field(default_factory=list)  # examples with no scored token (-inf)


def select(scores, cfg: SelectionConfig) -> Selection:
    """SPEC 4: combine task scores, keep the top k (ties to the lower pool index)."""
    from trim_fast.selection import combine_tasks, num_selected, select_top_k

    combined = combine_tasks(scores.score, cfg.combine)
    k = num_selected(combined.shape[0], fraction=cfg.fraction, k=cfg.k)
    idx = select_top_k(combined, k).tolist()
    unscored = [i for i, s in enumerate(combined.tolist()) if s == float("-inf")]
    return Selection(indices=idx, combined=combined, k=k, unscored=unscored)


def selection_name(fraction: float, k: int | None = None) -> str:
    """LESS's file name for a coreset: ``top_p0.05.jsonl``, or ``top_k{k}.jsonl``."""
    if k is not None:
        return f"top_k{k}.jsonl"
    return f"top_p{fraction:g}.jsonl"
