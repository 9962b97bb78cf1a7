"""Selection-quality metrics and the two text/representation baselines that need no model code
of their own: BM25 over the text and the random selector."""
from __future__ import annotations

import math
import random
import re
from collections import Counter
from typing import Sequence

import torch

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def precision_recall(selected: Sequence[int], labels: Sequence, family) -> tuple[float, float]:
    """Share of ``selected`` from ``family``, and share of the family that was selected."""
    relevant = sum(1 for x in labels if x == family)
    hits = sum(1 for i in selected if labels[i] == family)
    return hits / max(1, len(selected)), hits / max(1, relevant)


def bm25_scores(pool_texts: Sequence[str], query_texts: Sequence[str], *, k1: float = 1.5,
                b: float = 0.75) -> torch.Tensor:
    """BM25 of each pool text against the query formed by all target texts together (Okapi, with
    the usual ``ln(1 + (N - df + 0.5) / (df + 0.5))`` idf)."""
    docs = [Counter(words(t)) for t in pool_texts]
    lengths = [sum(d.values()) for d in docs]
    avg = sum(lengths) / max(1, len(docs))
    df = Counter()
    for d in docs:
        df.update(d.keys())
    n = len(docs)
    query = Counter()
    for q in query_texts:
        query.update(words(q))
    idf = {w: math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5)) for w in query}
    out = []
    for d, length in zip(docs, lengths):
        s = 0.0
        for w, qf in query.items():
            tf = d.get(w, 0)
            if tf:
                s += qf * idf[w] * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg))
        out.append(s)
    return torch.tensor(out, dtype=torch.float64)


def random_selections(pool_size: int, k: int, seeds: Sequence[int]) -> list[list[int]]:
    return [random.Random(s).sample(range(pool_size), k) for s in seeds]
