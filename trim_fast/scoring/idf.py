"""Pool IDF (SPEC 3): ``idf(t) = ln((1 + N) / (1 + df(t))) + 1``, where ``df(t)`` counts the pool
examples whose counted tokens contain ``t``. Counted in one streaming pass over tokenised chunks,
summed across chunks and ranks; the twin is :func:`trim_fast.reference.idf`."""
from __future__ import annotations

import torch


class DocumentFrequency:
    """``df [V]`` (int64, CPU) and ``num_examples`` over a fixed vocabulary."""

    def __init__(self, vocab_size: int) -> None:
        if int(vocab_size) < 1:
            raise ValueError(f"DocumentFrequency: vocab_size must be >= 1, got {vocab_size}")
        self.df = torch.zeros(int(vocab_size), dtype=torch.int64)
        self.num_examples = 0

    def add_chunk(self, chunk) -> None:
        """Every example of a :class:`trim_fast.batching.TokenChunk` (one with no counted token
        still counts in ``N``)."""
        self.num_examples += len(chunk)
        if not bool(chunk.counted.any()):
            return
        ids = chunk.ids[chunk.counted]
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.df.numel():
            raise ValueError(f"token id {lo if lo < 0 else hi} is outside the vocabulary "
                             f"({self.df.numel()}); the pool was tokenised with another tokenizer?")
        example = chunk.example_of_token()[chunk.counted]
        # each (example, token) pair once: unique over a combined key
        pairs = torch.unique(example * self.df.numel() + ids)
        self.df += torch.bincount(pairs % self.df.numel(), minlength=self.df.numel())

    def merge(self, other: "DocumentFrequency") -> None:
        """Add the counts of another part of the pool (same vocabulary)."""
        if other.df.numel() != self.df.numel():
            raise ValueError("DocumentFrequency.merge: the vocabularies differ in size")
        self.df += other.df
        self.num_examples += other.num_examples

    def idf(self) -> torch.Tensor:
        """``[V]`` float32: ``ln((1 + N) / (1 + df(t))) + 1`` (ids never seen: ``df = 0``)."""
        return (torch.log((1.0 + self.num_examples) / (1.0 + self.df.double())) + 1.0).float()


def dominant_classes(df: DocumentFrequency, banks: dict, threshold: float = 0.9
                     ) -> dict[int, tuple[float, list[str]]]:
    """``{token id: (share of the pool's examples that count it, tasks)}`` for each fingerprinted
    token class counted in more than ``threshold`` of the pool: such a class matches nearly every
    record, so it says nothing about which records fit a task (template text that slipped into
    the counted tokens, a separator every record uses)."""
    n = max(1, df.num_examples)
    out: dict[int, tuple[float, list[str]]] = {}
    for task, bank in banks.items():
        share = df.df[bank.classes.long()].double() / n
        for i in (share > threshold).nonzero().flatten().tolist():
            tid = int(bank.classes[i])
            out.setdefault(tid, (float(share[i]), []))[1].append(task)
    return out


__all__ = ["DocumentFrequency", "dominant_classes"]
