"""How tokenised examples become forward batches, in one place: a chunk of examples as flat
token tensors (:class:`TokenChunk`), length-sorted batches under a padded-token budget
(:func:`token_budget_batches`) and right-padded batch tensors (:func:`pad_batch`). Fingerprinting,
pool scoring, the warmup-free evaluation and the benchmarks all batch through here, so a batch
is formed the same way wherever an example is scored."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


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

    def example_of_token(self) -> torch.Tensor:
        """``[total]`` the example index of each token."""
        return torch.repeat_interleave(torch.arange(len(self)), torch.tensor(self.lengths(), dtype=torch.long))

    @staticmethod
    def from_tokenized(items: Sequence) -> "TokenChunk":
        """From :class:`trim_fast.data.Tokenized` items (``ids``, ``counted``, ``truncated``)."""
        ids, counted, offsets, truncated = [], [], [0], []
        for t in items:
            ids.extend(t.ids)
            counted.extend(t.counted)
            offsets.append(len(ids))
            truncated.append(t.truncated)
        return TokenChunk(torch.tensor(ids, dtype=torch.int64), torch.tensor(counted, dtype=torch.bool),
                          torch.tensor(offsets, dtype=torch.int64),
                          torch.tensor(truncated, dtype=torch.int64))

    def padded(self, indices: Sequence[int], pad_id: int, device, *,
               lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """:func:`pad_batch` of the examples ``indices``, each cut to ``lengths[i]`` tokens when
        given (``[n]``, the whole chunk's), gathered from the flat tensors in one step."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        starts = self.offsets[index]
        lens = (self.offsets[index + 1] - starts) if lengths is None else lengths[index]
        width = int(lens.max()) if index.numel() else 0
        pos = torch.arange(width)
        valid = pos[None] < lens[:, None]
        flat = (starts[:, None] + pos[None]).clamp_max(max(0, self.ids.numel() - 1))
        ids = torch.where(valid, self.ids[flat], pad_id) if self.ids.numel() else \
            torch.full(valid.shape, pad_id, dtype=torch.long)
        counted = valid & self.counted[flat] if self.ids.numel() else valid
        return _to_device(ids, valid.long(), counted, device)

    def subset(self, indices: Sequence[int]) -> "TokenChunk":
        """The examples ``indices`` (in that order) as a chunk of their own."""
        rows = [self.example(i) for i in indices]
        lengths = torch.tensor([0] + [r[0].numel() for r in rows], dtype=torch.int64)
        return TokenChunk(torch.cat([r[0] for r in rows]) if rows else self.ids[:0],
                          torch.cat([r[1] for r in rows]) if rows else self.counted[:0],
                          lengths.cumsum(0), self.truncated[list(indices)])

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"ids": self.ids, "counted": self.counted.to(torch.uint8), "offsets": self.offsets,
                "truncated": self.truncated}

    @staticmethod
    def from_tensors(t: dict[str, torch.Tensor]) -> "TokenChunk":
        return TokenChunk(t["ids"], t["counted"].bool(), t["offsets"], t["truncated"])

    def batches(self, max_tokens: int) -> list[list[int]]:
        return token_budget_batches(self.lengths(), max_tokens)


def token_budget_batches(lengths: Sequence[int], max_tokens: int, *,
                         tight_from: int | None = None, tight_ratio: float = 0.9) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches whose padded size ``B * max_len`` is at most
    ``max_tokens``. Longest first, ties by index, so padding stays small and the result is
    deterministic; every index appears exactly once; an example longer than the budget gets a
    batch of its own. A length of 0 counts as 1. ``tight_from``: a batch that already holds
    that many tokens also ends before an example shorter than ``tight_ratio`` times its
    longest (less padding where a bigger batch would not run faster, as on CPUs)."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    lens = []
    for i, n in enumerate(lengths):
        if isinstance(n, bool) or int(n) != n or n < 0:
            raise ValueError(f"lengths[{i}] must be a non-negative int, got {n!r}")
        lens.append(max(1, int(n)))
    order = sorted(range(len(lens)), key=lambda i: (-lens[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Longest first: the batch's padded length is its first member's.
        full = (len(current) + 1) * lens[current[0]] > max_tokens if current else False
        tight = (tight_from is not None and current and len(current) * lens[current[0]] >= tight_from
                 and lens[i] < tight_ratio * lens[current[0]])
        if full or tight:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


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
    return _to_device(ids, mask, counted, device)


def _to_device(ids, mask, counted, device) -> tuple[torch.Tensor, ...]:
    """On CUDA: one pinned, non-blocking copy of the three (pinning is per call, so one call;
    a pageable copy would wait for the batch before it)."""
    device = torch.device(device)
    if device.type != "cuda":
        return ids, mask, counted
    both = torch.stack([ids, mask, counted.long()]).pin_memory().to(device, non_blocking=True)
    return both[0], both[1], both[2].bool()


__all__ = ["TokenChunk", "token_budget_batches", "pad_batch"]
