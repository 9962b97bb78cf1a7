"""Scoring a large pool: streamed in fixed chunks, tokenised once into a cache, scored in
resumable shards, split across ``torchrun`` ranks.

Layout under ``OUT/work``: ``manifest.json`` (what the run is: model, banks, pool files, config),
``tokens/chunk-NNNNNN.safetensors`` (token ids and counted masks) and
``scores/chunk-NNNNNN.safetensors`` (per-task scores of the chunk). Every file is written to a
temp name and renamed, so a run killed at any point (``kill -9`` included) leaves only whole
chunks; started again with the same arguments it reuses them and ends with the same table. A
chunk is always batched and scored the same way whatever the number of ranks, so the result does
not depend on the world size. A changed model, bank, pool file or config is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from trim_fast.data import DataError, Example, read_examples, tokenize_example
from trim_fast.distributed import DistContext
from trim_fast.io import save_safetensors_atomic

CACHE_VERSION = 1


# ---------------------------------------------------------------------------------------------
# streaming the pool
# ---------------------------------------------------------------------------------------------


def pool_signature(paths: Sequence[str]) -> list[dict]:
    """What identifies the pool files: path, size and modification time (cheap, no full read)."""
    out = []
    for p in paths:
        if not os.path.exists(p):
            raise DataError(f"{p}: no such file")
        st = os.stat(p)
        out.append({"path": os.path.abspath(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def iter_pool_chunks(paths: Sequence[str], chunk_size: int) -> Iterator[tuple[int, int, list[Example]]]:
    """``(chunk index, index of its first example, examples)``, streaming; ids must be unique."""
    seen: dict[str, str] = {}
    chunk: list[Example] = []
    c, start = 0, 0
    for p in paths:
        for ex in read_examples(p):
            if ex.id in seen:
                raise DataError(f"{ex.source}:{ex.line}: duplicate id {ex.id!r} (first seen at {seen[ex.id]})")
            seen[ex.id] = f"{ex.source}:{ex.line}"
            chunk.append(ex)
            if len(chunk) == chunk_size:
                yield c, start, chunk
                c, start, chunk = c + 1, start + len(chunk), []
    if chunk:
        yield c, start, chunk


def read_selected(paths: Sequence[str], indices: Sequence[int]) -> list[Example]:
    """The examples at pool ``indices`` (in that order), streaming the files once."""
    want = {i: pos for pos, i in enumerate(indices)}
    out: list[Example | None] = [None] * len(indices)
    i = 0
    for p in paths:
        for ex in read_examples(p):
            if i in want:
                out[want[i]] = ex
            i += 1
    if any(e is None for e in out):
        raise DataError("the pool files changed while the run was writing its outputs")
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# chunk files
# ---------------------------------------------------------------------------------------------


@dataclass
class TokenChunk:
    """Token ids and counted masks of a chunk's examples, flat with ``offsets`` ``[n + 1]``."""

    ids: torch.Tensor  # int64 [total]
    counted: torch.Tensor  # bool [total]
    offsets: torch.Tensor  # int64 [n + 1]
    truncated: torch.Tensor  # int64 [n]

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def lengths(self) -> list[int]:
        return (self.offsets[1:] - self.offsets[:-1]).tolist()

    def example(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, e = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.ids[s:e], self.counted[s:e]

    def document_frequency(self, vocab_size: int) -> torch.Tensor:
        """``[V]`` count of this chunk's examples containing each token among counted tokens."""
        ex_of = torch.repeat_interleave(torch.arange(len(self)), torch.tensor(self.lengths()))
        pairs = torch.stack([ex_of[self.counted], self.ids[self.counted]], 1)
        if pairs.numel() == 0:
            return torch.zeros(vocab_size, dtype=torch.int64)
        tokens = torch.unique(pairs, dim=0)[:, 1]
        if int(tokens.max()) >= vocab_size:
            raise ValueError(f"token id {int(tokens.max())} is outside the vocabulary ({vocab_size})")
        return torch.bincount(tokens, minlength=vocab_size)

    @staticmethod
    def from_examples(tokenizer, examples: Sequence[Example], scope: str, max_length: int) -> "TokenChunk":
        ids, counted, offsets, truncated = [], [], [0], []
        for ex in examples:
            t = tokenize_example(tokenizer, ex, scope=scope, max_length=max_length)
            ids.extend(t.ids)
            counted.extend(t.counted)
            offsets.append(len(ids))
            truncated.append(t.truncated)
        return TokenChunk(torch.tensor(ids, dtype=torch.int64), torch.tensor(counted, dtype=torch.bool),
                          torch.tensor(offsets, dtype=torch.int64), torch.tensor(truncated, dtype=torch.int64))

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"ids": self.ids, "counted": self.counted.to(torch.uint8), "offsets": self.offsets,
                "truncated": self.truncated}

    @staticmethod
    def from_tensors(t: dict[str, torch.Tensor]) -> "TokenChunk":
        return TokenChunk(t["ids"], t["counted"].bool(), t["offsets"], t["truncated"])


def save_atomic(tensors: dict[str, torch.Tensor], path: str, header: dict) -> None:
    save_safetensors_atomic(tensors, path, {"trim_fast": json.dumps(header, sort_keys=True)})


def load_checked(path: str, header: dict) -> dict[str, torch.Tensor] | None:
    """The tensors of a chunk file whose header is ``header``; ``None`` when absent or unreadable
    (a file cut short is redone, never trusted)."""
    if not os.path.exists(path):
        return None
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("trim_fast", "null"))
        if meta != json.loads(json.dumps(header, sort_keys=True)):
            return None
        return load_file(path)
    except (SafetensorError, OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# the run directory
# ---------------------------------------------------------------------------------------------


def bank_digest(bank) -> str:
    h = hashlib.sha256()
    h.update(bank.classes.to(torch.int64).cpu().numpy().tobytes())
    h.update(bank.vectors.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class RunDir:
    """``OUT/work``: manifest, token cache and score shards of one run."""

    def __init__(self, out_dir: str):
        self.root = os.path.join(out_dir, "work")
        self.tokens = os.path.join(self.root, "tokens")
        self.scores = os.path.join(self.root, "scores")
        self.manifest = os.path.join(self.root, "manifest.json")

    def token_path(self, c: int) -> str:
        return os.path.join(self.tokens, f"chunk-{c:06d}.safetensors")

    def score_path(self, c: int) -> str:
        return os.path.join(self.scores, f"chunk-{c:06d}.safetensors")

    def prepare(self, manifest: dict, ctx: DistContext) -> None:
        """Create the layout, or check that an existing one was made by the same run (on rank 0;
        a refusal there is raised on every rank)."""
        ctx.on_main(lambda: self._prepare_main(manifest))
        os.makedirs(self.tokens, exist_ok=True)  # other nodes without a shared filesystem
        os.makedirs(self.scores, exist_ok=True)

    def _prepare_main(self, manifest: dict) -> None:
        from trim_fast.io import atomic_open

        os.makedirs(self.tokens, exist_ok=True)
        os.makedirs(self.scores, exist_ok=True)
        if os.path.exists(self.manifest):
            with open(self.manifest) as f:
                old = json.load(f)
            if old != json.loads(json.dumps(manifest, sort_keys=True)):
                changed = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
                raise RuntimeError(
                    f"{self.root} holds a run with a different {', '.join(changed)}; "
                    "refusing to mix results. Use a new --out, or delete that directory")
            return
        with atomic_open(self.manifest) as f:
            json.dump(manifest, f, indent=2, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------

SCORE_FIELDS = ("score", "mean", "max", "coverage")
COUNT_FIELDS = ("n_scored", "n_matched")


@dataclass
class ScoredPool:
    """Per-task ``[T, P]`` scores and per-example columns of the whole pool (rank 0)."""

    tasks: list[str]
    score: torch.Tensor
    mean: torch.Tensor
    max: torch.Tensor
    coverage: torch.Tensor
    n_scored: torch.Tensor
    n_matched: torch.Tensor
    n_tokens: torch.Tensor
    n_counted: torch.Tensor
    truncated: torch.Tensor
    ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    families: list = field(default_factory=list)
    tokens: int = 0
    seconds_forward: float = 0.0
    chunks_reused: int = 0


def pad_batch(rows: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """Right-padded ``input_ids``, ``attention_mask``, ``counted``; pinned, non-blocking on CUDA."""
    n = max(r[0].numel() for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    counted = torch.zeros((len(rows), n), dtype=torch.bool)
    for b, (r_ids, r_counted) in enumerate(rows):
        ids[b, : r_ids.numel()] = r_ids
        mask[b, : r_ids.numel()] = 1
        counted[b, : r_ids.numel()] = r_counted
    device = torch.device(device)
    if device.type == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in (ids, mask, counted))
    return ids, mask, counted


def score_chunk(model, chunk: TokenChunk, banks: dict, cfg, idf_table, pad_id: int) -> dict[str, torch.Tensor]:
    """Per-task scores of one chunk: length-sorted token-budget batches, base-model forward only,
    matching and pooling fused on the device; only a few floats per example come back."""
    from trim_fast.capture import encode_last_hidden, token_budget_batches
    from trim_fast.scoring import score_batch

    device = next(model.parameters()).device
    n, tasks = len(chunk), list(banks)
    out = {k: torch.full((len(tasks), n), float("nan")) for k in SCORE_FIELDS}
    out.update({k: torch.zeros((len(tasks), n), dtype=torch.int64) for k in COUNT_FIELDS})
    for batch in token_budget_batches(chunk.lengths(), cfg.max_tokens):
        ids, mask, counted = pad_batch([chunk.example(i) for i in batch], pad_id, device)
        hidden = encode_last_hidden(model, ids, mask)
        index = torch.tensor(batch, dtype=torch.long)
        per_task = score_batch(hidden, ids, counted, [banks[t] for t in tasks], idf=idf_table,
                               fallback=cfg.fallback, fallback_penalty=cfg.fallback_penalty,
                               w_mean=cfg.w_mean, w_max=cfg.w_max, w_coverage=cfg.w_coverage)
        for t_i, pooled in enumerate(per_task):
            for k in SCORE_FIELDS:
                out[k][t_i, index] = getattr(pooled, k).float().cpu()
            for k in COUNT_FIELDS:
                out[k][t_i, index] = getattr(pooled, k).to(torch.int64).cpu()
    lengths = torch.tensor(chunk.lengths(), dtype=torch.int64)
    ex_of = torch.repeat_interleave(torch.arange(n), lengths)
    out["n_tokens"] = lengths
    out["n_counted"] = torch.bincount(ex_of[chunk.counted], minlength=n)
    out["truncated"] = chunk.truncated.clone()
    return out


def score_pool(model, tokenizer, pool_paths: Sequence[str], banks: dict, cfg, out_dir: str, *,
               manifest: dict, ctx: DistContext | None = None, progress: bool = True) -> ScoredPool | None:
    """Tokenise (cached), compute pool IDF, score every chunk of this rank (resumable), and
    assemble the whole pool's scores on rank 0 (other ranks return ``None``)."""
    from trim_fast.pipeline import Progress

    ctx = ctx or DistContext()
    run = RunDir(out_dir)
    run.prepare(manifest, ctx)
    vocab = len(tokenizer)
    tok_header = {"v": CACHE_VERSION, "kind": "tokens", "tokenizer": manifest.get("tokenizer_hash"),
                  "scope": cfg.scope, "max_length": cfg.max_length}
    # pass 1: stream the pool; tokenise this rank's chunks (or reuse them); document frequency
    df = torch.zeros(vocab, dtype=torch.int64)
    meta = {"ids": [], "sources": [], "lines": [], "families": []}
    mine: dict[int, int] = {}  # this rank's chunks -> their token count
    n_examples = 0
    bar = Progress(0, "tokenising", progress and ctx.is_main, unit="ex")
    for c, start, examples in iter_pool_chunks(pool_paths, cfg.chunk_size):
        n_examples += len(examples)
        if ctx.is_main:
            meta["ids"] += [e.id for e in examples]
            meta["sources"] += [e.source for e in examples]
            meta["lines"] += [e.line for e in examples]
            meta["families"] += [e.meta.get("family", e.meta.get("task")) for e in examples]
        if c % ctx.world == ctx.rank:
            header = dict(tok_header, chunk=c, start=start, n=len(examples))
            cached = load_checked(run.token_path(c), header)
            if cached is None:
                chunk = TokenChunk.from_examples(tokenizer, examples, cfg.scope, cfg.max_length)
                save_atomic(chunk.to_tensors(), run.token_path(c), header)
            else:
                chunk = TokenChunk.from_tensors(cached)
            mine[c] = int(chunk.ids.numel())
            df += chunk.document_frequency(vocab)
        bar.update(len(examples))
    bar.close()
    if n_examples == 0:
        raise DataError("the pool is empty")
    ctx.all_reduce_sum(df)
    device = next(model.parameters()).device
    idf_table = None
    if cfg.idf == "pool":
        from trim_fast.scoring import DocumentFrequency

        idf_table = DocumentFrequency.from_counts(df, n_examples).idf(vocab).to(device)
    # pass 2: score this rank's chunks that have no valid shard yet
    score_header = {"v": CACHE_VERSION, "kind": "scores", "run": manifest_digest(manifest),
                    "pool_examples": n_examples}
    shards, reused, tokens, seconds = {}, 0, 0, 0.0
    bar = Progress(sum(mine.values()), f"scoring (rank {ctx.rank})" if ctx.world > 1 else "scoring",
                   progress)
    for c in mine:
        chunk = TokenChunk.from_tensors(load_file(run.token_path(c)))
        header = dict(score_header, chunk=c)
        shard = load_checked(run.score_path(c), header)
        if shard is None:
            t0 = time.perf_counter()
            shard = score_chunk(model, chunk, banks, cfg, idf_table, tokenizer.pad_token_id)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - t0
            tokens += int(chunk.ids.numel())
            save_atomic(shard, run.score_path(c), header)
        else:
            reused += 1
        shards[c] = shard
        bar.update(int(chunk.ids.numel()))
    bar.close()
    gathered = ctx.gather_to_main((shards, tokens, seconds, reused))
    if not ctx.is_main:
        return None
    all_shards = {}
    for part in gathered:
        all_shards.update(part[0])
    order = sorted(all_shards)
    cat = {k: torch.cat([all_shards[c][k] for c in order], dim=-1) for k in all_shards[order[0]]}
    return ScoredPool(tasks=list(banks), **cat, **meta,
                      tokens=sum(p[1] for p in gathered), seconds_forward=max(p[2] for p in gathered),
                      chunks_reused=sum(p[3] for p in gathered))


def manifest_digest(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
