"""Selection-quality metrics and the baselines that need no model: BM25 over the text (the
``bm25s`` library) and the random selector."""
from __future__ import annotations

import random
import re
from typing import Sequence

import torch

from trim_fast.extras import require

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
    """Okapi BM25 of each pool text against one query made of all target texts together (a word
    repeated across targets counts that many times), with the Lucene idf
    ``ln(1 + (N - df + 0.5) / (df + 0.5))``: the ``bm25s`` library, in float64, on our own word
    tokens. ``bm25s`` leaves out the constant ``k1 + 1`` of the term weight; it is put back so
    the numbers are the textbook formula's."""
    bm25s = require("bm25s", "bm25", "the BM25 baseline")
    import numpy as np

    index = bm25s.BM25(k1=k1, b=b, method="lucene", dtype="float64")
    index.index([words(t) for t in pool_texts], show_progress=False)
    vocab = index.vocab_dict
    query = [vocab[w] for q in query_texts for w in words(q) if w in vocab]
    if not query:
        return torch.zeros(len(pool_texts), dtype=torch.float64)
    return torch.from_numpy((k1 + 1) * np.asarray(index.get_scores(query), dtype=np.float64))


def random_selections(pool_size: int, k: int, seeds: Sequence[int]) -> list[list[int]]:
    return [random.Random(s).sample(range(pool_size), k) for s in seeds]
