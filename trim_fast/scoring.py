"""Pool IDF (SPEC 3) in one streaming pass, and scoring a batch against several task banks.

:class:`DocumentFrequency` counts, per token id, the pool examples whose counted tokens contain
it; it is fed example by example (``update``) or a padded batch at a time (``update_batch``,
vectorised), so the pool is tokenised once and never held whole. ``idf(V)`` then gives
``ln((1 + N) / (1 + df(t))) + 1`` for every id, as :func:`trim_fast.reference.idf`.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from trim_fast.io import save_safetensors_atomic
from trim_fast.ops.token_match import PooledScores, match_and_pool

_DF_FORMAT = "trim_fast.document_frequency"


class DocumentFrequency:
    """Streaming ``df(t)`` and ``N`` over the pool's counted tokens (CPU int64 counts)."""

    def __init__(self) -> None:
        self.df = torch.zeros(0, dtype=torch.long)
        self.num_examples = 0

    @classmethod
    def from_counts(cls, df: torch.Tensor, num_examples: int) -> "DocumentFrequency":
        """From ``df`` counts already summed elsewhere (e.g. over chunks and ranks)."""
        out = cls()
        out.df = df.to(torch.long).cpu().clone()
        out.num_examples = int(num_examples)
        return out

    def _grow(self, size: int) -> None:
        if size > self.df.numel():
            grown = torch.zeros(max(size, 2 * self.df.numel()), dtype=torch.long)
            grown[: self.df.numel()] = self.df
            self.df = grown

    def update(self, token_ids) -> None:
        """One example: the ids of its counted tokens (a sequence or a 1-D tensor)."""
        ids = torch.as_tensor(token_ids if isinstance(token_ids, torch.Tensor) else list(token_ids),
                              dtype=torch.long).reshape(-1).cpu()
        self.num_examples += 1
        if ids.numel() == 0:
            return
        if int(ids.min()) < 0:
            raise ValueError("DocumentFrequency.update: negative token id")
        uniq = torch.unique(ids)
        self._grow(int(uniq[-1]) + 1)
        self.df.index_add_(0, uniq, torch.ones_like(uniq))

    def update_batch(self, token_ids: torch.Tensor, counted: torch.Tensor) -> None:
        """A padded batch: ``token_ids [B, N]`` and ``counted [B, N]`` bool; every row is one
        example (a row with no counted token still counts in ``N``)."""
        if token_ids.ndim != 2 or counted.shape != token_ids.shape:
            raise ValueError(f"update_batch: expected token_ids and counted of one [B, N] shape, got "
                             f"{tuple(token_ids.shape)} and {tuple(counted.shape)}")
        if counted.dtype != torch.bool:
            raise TypeError(f"update_batch: counted must be bool, got {counted.dtype}")
        b = token_ids.shape[0]
        ids = token_ids.long().cpu()
        counted = counted.cpu()
        self.num_examples += b
        if not bool(counted.any()):
            return
        # where() instead of boolean-mask indexing: the latter is slow on CPU.
        counted_ids = torch.where(counted, ids, torch.zeros_like(ids))
        if int(counted_ids.min()) < 0:
            raise ValueError("DocumentFrequency.update_batch: a counted token has a negative id")
        width = int(counted_ids.max()) + 1
        example = torch.arange(b).unsqueeze(1)
        # Each (example, token) pair once: unique over a combined key; -1 marks uncounted.
        keys = torch.where(counted, example * width + ids, torch.full_like(ids, -1))
        pairs = torch.unique(keys)
        pairs = pairs[1:] if int(pairs[0]) < 0 else pairs
        self._grow(width)
        tokens = pairs % width
        self.df.index_add_(0, tokens, torch.ones_like(tokens))

    def merge(self, other: "DocumentFrequency") -> None:
        """Add the counts of another shard of the pool."""
        self._grow(other.df.numel())
        self.df.narrow(0, 0, other.df.numel()).add_(other.df)
        self.num_examples += other.num_examples

    def idf(self, vocab_size: int) -> torch.Tensor:
        """``[V]`` float32: ``ln((1 + N) / (1 + df(t))) + 1`` (ids never seen: ``df = 0``)."""
        seen = int(self.df.nonzero().max()) + 1 if bool((self.df > 0).any()) else 0
        if seen > vocab_size:
            raise ValueError(f"idf: token id {seen - 1} was counted but vocab_size is {vocab_size}; "
                             f"the pool was tokenised with another tokenizer?")
        df = torch.zeros(vocab_size, dtype=torch.float64)
        n = min(vocab_size, self.df.numel())
        df[:n] = self.df[:n].double()
        return (torch.log((1.0 + self.num_examples) / (1.0 + df)) + 1.0).float()

    def save(self, path: str | os.PathLike, *, meta: dict | None = None) -> None:
        import json


        path = os.fspath(path)
        header = {"format": _DF_FORMAT, "num_examples": str(self.num_examples),
                  "meta": json.dumps(meta or {})}
        save_safetensors_atomic({"df": self.df}, os.fspath(path), header)

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect: dict | None = None) -> "DocumentFrequency":
        import json

        from safetensors import safe_open

        from trim_fast.fingerprints import check_against

        path = os.fspath(path)
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                df = f.get_tensor("df") if "df" in set(f.keys()) else None
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{path!r} is not a readable document-frequency file: {exc}") from None
        if header.get("format") != _DF_FORMAT or df is None:
            raise ValueError(f"{path!r} is not a trim_fast document-frequency file")
        try:
            n = int(header["num_examples"])
            meta = json.loads(header.get("meta", "{}"))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path!r}: corrupt document-frequency header ({exc})") from None
        if df.ndim != 1 or df.dtype != torch.long or (df.numel() and int(df.min()) < 0) \
                or (df.numel() and int(df.max()) > n):
            raise ValueError(f"{path!r}: document frequencies are inconsistent with N={n}")
        check_against(meta, expect, path)
        out = cls()
        out.df, out.num_examples = df.clone(), n
        return out


def score_batch(hidden: torch.Tensor, token_ids: torch.Tensor, counted: torch.Tensor,
                banks: Sequence, *, idf: torch.Tensor | None = None, **kwargs) -> list[PooledScores]:
    """One batch of candidates against every task bank (one :class:`PooledScores` per bank)."""
    if len(banks) == 0:
        raise ValueError("score_batch: no fingerprint bank given")
    return [match_and_pool(hidden, token_ids, counted, bank, idf=idf, **kwargs) for bank in banks]


def stack_pooled(parts: Sequence[PooledScores]) -> PooledScores:
    """Concatenate the per-batch results of one task along the pool."""
    if not parts:
        raise ValueError("stack_pooled: nothing to stack")
    return PooledScores(*(torch.cat([getattr(p, f) for p in parts]) for f in
                          ("score", "mean", "max", "coverage", "n_scored", "n_matched")))


__all__ = ["DocumentFrequency", "score_batch", "stack_pooled"]
