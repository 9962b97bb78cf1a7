"""Scoring a candidate pool against task banks (SPEC 3), streamed in fixed chunks.

Pass 1 streams the records once: each chunk of ``chunk_size`` examples is tokenised (or its
cached tokens reused), its content digest taken, and the pool's document frequency counted.
Pass 2 scores each chunk: length-sorted batches under a token budget, the base model's forward
only, matching and pooling fused on the device; a few floats per example come back. With a
:class:`~trim_fast.run.workdir.WorkDir` both passes persist per chunk and a killed run resumes;
without one everything stays in memory. Under ``torchrun`` chunk ``c`` belongs to rank
``c % world``; a chunk is batched and scored the same way whatever the number of ranks, so the
result does not depend on the world size, nor on whether a work directory is used.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import torch
from safetensors.torch import load_file

from trim_fast.batching import TokenChunk
from trim_fast.capture.forward import ForwardCache, ForwardLoop, loop_for
from trim_fast.config import SelectionConfig
from trim_fast.data import DataError, tokenize_example, tokenizer_digest
from trim_fast.digests import pool_digest, records_digest
from trim_fast.ops.token_match import match_and_pool
from trim_fast.progress import Progress
from trim_fast.run.distributed import DistContext
from trim_fast.run.workdir import WorkDir
from trim_fast.scoring.idf import DocumentFrequency, dominant_classes

logger = logging.getLogger(__name__)

SCORE_FIELDS = ("score", "mean", "max", "coverage")
COUNT_FIELDS = ("n_scored", "n_matched")


@dataclass
class PoolScores:
    """Per-task ``[T, P]`` scores with their parts, and per-example columns, index-aligned with
    the pool as it was given (position ``i`` is the pool's ``i``-th example)."""

    tasks: list[str]
    score: torch.Tensor  # [T, P]; -inf where an example has no scored token
    mean: torch.Tensor  # [T, P] idf-weighted mean token score (NaN: no scored token)
    max: torch.Tensor  # [T, P]
    coverage: torch.Tensor  # [T, P] share of scored tokens that have a fingerprint
    n_scored: torch.Tensor  # [T, P]
    n_matched: torch.Tensor  # [T, P]
    n_tokens: torch.Tensor  # [P] tokens of the rendered example
    n_counted: torch.Tensor  # [P] of them, counted (scope applied)
    truncated: torch.Tensor  # [P] tokens cut by max_length
    ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    families: list = field(default_factory=list)
    tokens: int = 0  # tokens forwarded in this call (reused chunks excluded)
    seconds_forward: float = 0.0
    chunks_reused: int = 0

    def __len__(self) -> int:
        return len(self.ids)


def iter_chunks(examples: Iterable, chunk_size: int) -> Iterator[tuple[int, int, list]]:
    """``(chunk index, index of its first example, examples)``."""
    chunk: list = []
    c, start = 0, 0
    for ex in examples:
        chunk.append(ex)
        if len(chunk) == chunk_size:
            yield c, start, chunk
            c, start, chunk = c + 1, start + len(chunk), []
    if chunk:
        yield c, start, chunk


def chunk_digest(examples: Sequence) -> str:
    return records_digest(ex.digest() for ex in examples)


class _Copies:
    """Records whose content (not id) repeats an earlier record's: 8 bytes of digest each."""

    def __init__(self) -> None:
        self.seen: dict[int, str] = {}
        self.count = 0
        self.example = ""

    def add(self, examples: Sequence) -> None:
        for ex in examples:
            key = int.from_bytes(ex.content_digest()[:8], "little")
            where = f"{ex.source}:{ex.line}"
            if key in self.seen:
                self.count += 1
                self.example = self.example or f"{where} = {self.seen[key]}"
            else:
                self.seen[key] = where


def tokenize_chunk(tokenizer, examples: Sequence, cfg: SelectionConfig) -> TokenChunk:
    return TokenChunk.from_tokenized([tokenize_example(tokenizer, ex, scope=cfg.scope,
                                                       max_length=cfg.max_length)
                                      for ex in examples])


class BatchScorer:
    """The per-task scoring of one batch's hidden states, for a method and its banks: centred by
    the banks' mean state where the method centres (all banks of a run share it), matched and
    pooled against each bank. Refuses banks fingerprinted at another layer than
    ``cfg.hidden_layer``."""

    def __init__(self, banks: dict, cfg: SelectionConfig, idf: torch.Tensor | None,
                 device: torch.device):
        for task, bank in banks.items():
            built = (bank.meta.get("settings") or {}).get("hidden_layer")
            if built != cfg.hidden_layer:
                raise ValueError(f"bank {task!r} was fingerprinted at hidden_layer={built!r}, this "
                                 f"run scores at hidden_layer={cfg.hidden_layer!r}; use the same "
                                 "layer for both")
        self.tasks = list(banks)
        self.tables = [banks[t].tables(device) for t in self.tasks]
        self.cfg = cfg
        self.idf = None if idf is None else idf.to(device)
        center = next(iter(banks.values())).center
        self.center = None if center is None else center.to(device)

    def score(self, hidden, ids, counted) -> list:
        cfg = self.cfg
        if self.center is not None:
            hidden = hidden.float() - self.center
        return [match_and_pool(hidden, ids, counted, t.vectors, t.row_table, idf=self.idf,
                               fallback=cfg.fallback, fallback_penalty=cfg.fallback_penalty,
                               w_mean=cfg.w_mean, w_max=cfg.w_max, w_coverage=cfg.w_coverage,
                               nearest=t.nearest)
                for t in self.tables]


def score_chunk(loop: ForwardLoop, chunk: TokenChunk, scorer: BatchScorer, *,
                bar: Progress | None = None) -> dict[str, torch.Tensor]:
    """Per-task scores of one chunk (``[T, n]`` each) and its per-example token counts, its
    batches forwarded by ``loop`` (the levers and the hidden layer are the loop's). ``bar``
    moves by each batch's tokens as it is scored (a chunk holds thousands of records)."""
    n, t = len(chunk), len(scorer.tasks)
    lengths = chunk.lengths()
    out = {k: torch.full((t, n), float("nan")) for k in SCORE_FIELDS}
    out.update({k: torch.zeros((t, n), dtype=torch.int64) for k in COUNT_FIELDS})
    for hb in loop.hidden_batches(chunk):
        index = torch.tensor(hb.index, dtype=torch.long)
        for t_i, pooled in enumerate(scorer.score(hb.hidden, hb.ids, hb.counted)):
            for k in SCORE_FIELDS:
                out[k][t_i, index] = getattr(pooled, k).float().cpu()
            for k in COUNT_FIELDS:
                out[k][t_i, index] = getattr(pooled, k).to(torch.int64).cpu()
        if bar is not None:
            bar.update(sum(lengths[i] for i in hb.index))
    out["n_tokens"] = torch.tensor(lengths, dtype=torch.int64)
    out["n_counted"] = torch.bincount(chunk.example_of_token()[chunk.counted], minlength=n)
    out["truncated"] = chunk.truncated.clone()
    return out


def score_pool(model, tokenizer, records: Iterable, banks: dict, cfg: SelectionConfig, *,
               pad_id: int, run_digest: str = "", workdir: WorkDir | None = None,
               ctx: DistContext | None = None, progress: bool = False,
               forward_cache: ForwardCache | None = None) -> PoolScores:
    """Score every example of ``records`` against ``banks`` (``{task: FingerprintBank}``) with
    the base transformer ``model`` (eval mode). ``run_digest`` identifies what the score shards
    depend on besides the records (model, tokenizer, banks, settings); only used with a
    ``workdir``. Every rank gets the whole pool's scores."""
    ctx = ctx or DistContext()
    cfg = cfg.resolved()
    vocab = len(tokenizer)
    tok_header = {"kind": "tokens", "tokenizer": tokenizer_digest(tokenizer), "scope": cfg.scope,
                  "max_length": cfg.max_length}
    # pass 1: stream the records; tokenise this rank's chunks (or reuse them); document frequency
    df = DocumentFrequency(vocab)
    columns = {"ids": [], "sources": [], "lines": [], "families": []}
    digests: list[str] = []
    mine: dict[int, TokenChunk | int] = {}  # in memory: the chunk; with a workdir: its size
    copies = _Copies()
    with Progress(0, "tokenising", progress and ctx.is_main, unit="ex") as bar:
        for c, start, examples in iter_chunks(records, cfg.chunk_size):
            digests.append(chunk_digest(examples))
            copies.add(examples)
            columns["ids"] += [e.id for e in examples]
            columns["sources"] += [e.source for e in examples]
            columns["lines"] += [e.line for e in examples]
            columns["families"] += [e.meta.get("family", e.meta.get("task")) for e in examples]
            if c % ctx.world == ctx.rank:
                header = dict(tok_header, chunk=c, start=start, n=len(examples), content=digests[c])
                cached = workdir.load(workdir.token_path(c), header) if workdir else None
                if cached is None:
                    chunk = tokenize_chunk(tokenizer, examples, cfg)
                    if workdir:
                        workdir.save(workdir.token_path(c), chunk.to_tensors(), header)
                else:
                    chunk = TokenChunk.from_tensors(cached)
                df.add_chunk(chunk)
                mine[c] = int(chunk.ids.numel()) if workdir else chunk
            bar.update(len(examples))
    n_examples = len(columns["ids"])
    if n_examples == 0:
        raise DataError("the pool is empty")
    if copies.count and ctx.is_main:
        logger.warning("%d pool record(s) are exact copies of earlier ones (e.g. %s); copies get "
                       "equal scores and may be selected together", copies.count, copies.example)
    ctx.all_reduce_sum(df.df)
    df.num_examples = n_examples
    dominant = dominant_classes(df, banks) if ctx.is_main else {}
    if dominant:
        logger.warning("fingerprinted token(s) counted in more than 90%% of the pool's records, so "
                       "they match nearly every record and do not tell records apart: %s",
                       ", ".join(f"{tokenizer.convert_ids_to_tokens(t)!r} ({100 * share:.0f}%, "
                                 f"{len(tasks)} task(s))" for t, (share, tasks) in dominant.items()))
    device = next(model.parameters()).device
    scorer = BatchScorer(banks, cfg, df.idf() if cfg.idf == "pool" else None, device)
    loop = loop_for(model, cfg, pad_id=pad_id, forward_cache=forward_cache)
    # pass 2: score this rank's chunks that have no valid shard yet. The pool IDF makes every
    # shard depend on the whole pool's content, not only on its own chunk's.
    score_header = {"kind": "scores", "run": run_digest, "pool_examples": n_examples,
                    "pool": pool_digest(digests) if cfg.idf == "pool" else None}
    shards, reused, tokens, seconds = {}, 0, 0, 0.0
    total = sum(v if isinstance(v, int) else int(v.ids.numel()) for v in mine.values())
    with Progress(total, "scoring" + (f" (rank {ctx.rank})" if ctx.world > 1 else ""), progress) as bar:
        for c, held in mine.items():
            # with a workdir the tokens were checked (or written) in pass 1: read them back
            chunk = held if isinstance(held, TokenChunk) else \
                TokenChunk.from_tensors(load_file(workdir.token_path(c)))
            header = dict(score_header, chunk=c, content=digests[c])
            shard = workdir.load(workdir.score_path(c), header) if workdir else None
            if shard is None:
                t0 = time.perf_counter()
                shard = score_chunk(loop, chunk, scorer, bar=bar)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds += time.perf_counter() - t0
                tokens += int(chunk.ids.numel())
                if workdir:
                    workdir.save(workdir.score_path(c), shard, header)
            else:
                reused += 1
                bar.update(int(chunk.ids.numel()))
            shards[c] = shard
    gathered = ctx.gather_to_main((shards, tokens, seconds, reused))
    result = None
    if ctx.is_main:
        all_shards = {}
        for part in gathered:
            all_shards.update(part[0])
        order = sorted(all_shards)
        cat = {k: torch.cat([all_shards[c][k] for c in order], dim=-1) for k in all_shards[order[0]]}
        result = PoolScores(tasks=list(banks), **cat, **columns,
                            tokens=sum(p[1] for p in gathered),
                            seconds_forward=max(p[2] for p in gathered),
                            chunks_reused=sum(p[3] for p in gathered))
    return ctx.broadcast_from_main(result)


__all__ = ["PoolScores", "ForwardCache", "BatchScorer", "score_pool", "score_chunk",
           "iter_chunks", "chunk_digest", "tokenize_chunk"]
