"""A score table (``scores.parquet``, written by ``select`` or ``score``) read back against its
pool: realigned by index, and refused where the pool's records are not the ones scored, by
identity or by content."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from trim_fast.errors import DataError

logger = logging.getLogger("trim_fast")


@dataclass
class ScoreTable:
    """``scores``: ``[T, P]`` per task (one row for a table without ``score[...]`` columns), pool
    order; ``sources``: the files the records came from; ``digests``: the pool's content digests
    as read while checking (16 bytes a record)."""

    scores: torch.Tensor
    sources: list[str]
    digests: bytes


def record_key(rid, source, line):
    """A record's identity across spellings of its file's path: its own id, or, for a record
    without one (id ``source:line``), the file's name and the line."""
    return (os.path.basename(str(source)), line) if rid == f"{source}:{line}" else rid


def read_score_table(path: str, pool) -> ScoreTable:
    """The table at ``path`` against ``pool`` (:class:`~trim_fast.data.Records`), read once."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
        raise DataError(f"{path}: not a readable score table ({exc})") from exc
    if not {"index", "id", "score"} <= set(table.column_names):
        raise DataError(f"{path}: not a trim-fast score table (needs 'index', 'id' and 'score' "
                        "columns)")
    ids, keys, digests = [], [], bytearray()
    for ex in pool:
        ids.append(ex.id)
        keys.append(record_key(ex.id, ex.source, ex.line))
        digests += ex.digest()
    index = table.column("index").to_pylist()
    if sorted(index) != list(range(len(ids))):
        raise DataError(f"{path}: the score table does not match the pool ({table.num_rows} rows, "
                        f"{len(ids)} examples)")
    t_ids = table.column("id").to_pylist()
    theirs = [record_key(*row) for row in zip(t_ids, table.column("source").to_pylist(),
                                               table.column("line").to_pylist())] \
        if {"source", "line"} <= set(table.column_names) else t_ids
    for row, i in enumerate(index):
        if keys[i] != theirs[row]:
            raise DataError(f"{path}: the score table does not match the pool: row {row + 1} is "
                            f"example {i} with id {t_ids[row]!r}, the pool's example {i} is "
                            f"{ids[i]!r}")
    _check_scored_content(path, table, index, bytes(digests), pool)
    cols = sorted(c for c in table.column_names if c.startswith("score[")) or ["score"]
    per_task = torch.full((len(cols), len(ids)), float("nan"))
    for t, c in enumerate(cols):
        values = [float("nan") if v is None else float(v) for v in table.column(c).to_pylist()]
        per_task[t, torch.tensor(index)] = torch.tensor(values, dtype=torch.float32)
    return ScoreTable(per_task, sorted(set(table.column("source").to_pylist())), bytes(digests))


def _check_scored_content(path: str, table, index: list, digests: bytes, pool) -> None:
    """The pool's records must be the ones scored, by content (the digests resume uses): an
    in-place edit that keeps ids, or lines moved in a pool without ids, is refused naming the
    first row that differs. A table written before the ``digest`` column existed is read with a
    warning."""
    if "digest" not in table.column_names:
        logger.warning("%s has no 'digest' column (written by an older trim-fast): the pool's "
                       "records cannot be checked against what was scored, only their ids", path)
        return
    for row, (i, theirs) in enumerate(zip(index, table.column("digest").to_pylist())):
        if digests[16 * i:16 * i + 16].hex() != theirs:
            ex = pool.take([i])[0]
            raise DataError(f"{path}: row {row + 1} scored pool example {i} ({ex.source}:"
                            f"{ex.line}, id {ex.id!r}) with other content than the pool holds "
                            "now: the pool was edited after it was scored. Score it again "
                            "(select or score with the same --out redoes only what changed)")


__all__ = ["ScoreTable", "record_key", "read_score_table"]
