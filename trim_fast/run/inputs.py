"""A run's inputs, opened and read once before any model loads (bad data fails in seconds), and
read again at the end: what is written is what was scored."""
from __future__ import annotations

import os
from dataclasses import dataclass

from trim_fast.data import Records, open_records, open_tasks
from trim_fast.errors import ConfigError, DataError

# folders a run writes inside its output directory (LESS layout: a task may not take one)
RUN_FOLDERS = ("work", "banks", "warmup_adapter", "warmup", "data")


@dataclass
class Inputs:
    """A run's opened sources: the ``pool`` (or None), the target ``tasks`` (``{task: records}``;
    None: in-domain mode) and the pool's content ``digests`` (16 bytes a record, pool order; see
    :meth:`~trim_fast.data.formats.Example.digest`), which the end of the run checks again."""

    pool: Records | None
    tasks: dict[str, Records] | None
    digests: bytes

    @property
    def size(self) -> int:
        return len(self.digests) // 16


def open_inputs(pool=None, targets=None, *, split=None, subset=None, format=None,
                layout: str = "trim", out: str | None = None) -> Inputs:
    """Open the pool sources and the target sources (one task per source, named after it) and
    read every record once. ``out``: the run's output directory, which the pool may not reach
    into."""
    kw = dict(split=split, subset=subset, format=format)
    records = open_records(pool, **kw) if pool else None
    tasks = open_tasks(list(targets), **kw) if targets else None
    if tasks and layout == "less":  # LESS writes OUT/<task>/: not over the run's own folders
        taken = sorted(set(RUN_FOLDERS) & set(tasks))
        if taken:
            raise ConfigError(f"--layout less writes OUT/<task>/, and task name(s) {taken} are "
                              "folders of the run itself; rename the target file(s)")
    if records is not None and out is not None:
        refuse_glob_into_out(records, out)
    digests = bytearray()
    for ex in records if records is not None else ():
        digests += ex.digest()
    for name, recs in (tasks or {}).items():
        if recs.count() == 0:
            raise DataError(f"targets {name!r}: no records")
    return Inputs(records, tasks, bytes(digests))


def refuse_glob_into_out(pool: Records, out: str) -> None:
    """A --pool glob that matches files inside --out would read a run's own outputs (an earlier
    coreset) as pool records."""
    out_real = os.path.realpath(out)
    for d in pool.describe():
        path = d.get("path")
        if d.get("glob") and path and os.path.realpath(path).startswith(out_real + os.sep):
            raise ConfigError(f"--pool {d['glob']}: matches {path}, inside --out {out}; narrow the "
                              "glob or write the outputs elsewhere")


class CheckedPool:
    """Pool examples read at the end of a run, each checked against the digest it was scored
    with; ``take`` as :meth:`Records.take` for the writers."""

    def __init__(self, examples: dict):
        self.examples = examples

    def take(self, indices):
        return [self.examples[int(i)] for i in indices]


def recheck_pool(pool: Records, digests: bytes, wanted) -> CheckedPool:
    """Read the pool again at the end of a run: every record must still be the one scored (the
    digests of :func:`open_inputs`), else the run is refused before anything is written (a pool
    edited while the run scored would give new text old scores). The examples at the positions
    ``wanted`` are kept for the outputs: what is written is what was checked."""
    wanted, kept, n = set(int(i) for i in wanted), {}, 0
    for n, ex in enumerate(pool, start=1):
        i = n - 1
        if 16 * n > len(digests) or ex.digest() != digests[16 * i:16 * n]:
            raise DataError(f"{ex.source}:{ex.line}: the pool changed while the run was scoring "
                            f"(record {i}, id {ex.id!r}, is not the record that was scored); "
                            "nothing was written: run the command again (unchanged chunks are "
                            "reused)")
        if i in wanted:
            kept[i] = ex
    if 16 * n != len(digests):
        raise DataError(f"the pool changed while the run was scoring: it holds {n} records, "
                        f"{len(digests) // 16} were scored; nothing was written: run the command again")
    return CheckedPool(kept)


def check_coreset_format(pool: Records, output_format: str) -> None:
    """A JSONL coreset cannot carry bytes unchanged (strict JSON has no bytes): when the coreset
    will be JSONL, refuse a Parquet pool with a binary column now, before any model is loaded,
    rather than after scoring. (Other sources are checked record by record when written.)"""
    from trim_fast.run.outputs import resolve_output_format

    sources = pool.describe()
    fmt = resolve_output_format(output_format,
                                [str(d.get("path") or d.get("name") or "") for d in sources])
    if fmt != "jsonl":
        return
    import pyarrow.parquet as pq

    for d in sources:
        if d.get("kind") != "parquet":
            continue
        for column in pq.read_schema(d["path"]):
            if _holds_binary(column.type):
                raise DataError(f"{d['path']}: column {column.name!r} holds binary data, which a "
                                "JSONL coreset cannot carry unchanged; write the coreset with "
                                "--output-format parquet (or hf), or leave --output-format at auto")


def _holds_binary(t) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) \
            or getattr(pa.types, "is_binary_view", lambda _: False)(t):
        return True
    if pa.types.is_struct(t):
        return any(_holds_binary(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _holds_binary(t.key_type) or _holds_binary(t.item_type)
    if hasattr(t, "value_type"):  # list, large list, fixed-size list, dictionary
        return _holds_binary(t.value_type)
    return False


__all__ = ["RUN_FOLDERS", "Inputs", "open_inputs", "refuse_glob_into_out", "CheckedPool",
           "recheck_pool", "check_coreset_format"]
