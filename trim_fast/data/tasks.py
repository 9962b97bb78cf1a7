"""Target tasks: the one rule that names a task after its source, and opening targets as tasks."""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

from trim_fast.data.records import Records
from trim_fast.data.sources import open_records
from trim_fast.errors import ConfigError, DataError


def task_names(sources) -> list[str]:
    """One distinct, file-name-safe task name per target source (``--targets``, a list of paths):
    the file's stem (a glob: the fixed part of its name, else its folder), then -2, -3, ... where
    taken."""
    names = []
    for src in sources:
        path = str(src).rstrip("/")
        stem = re.sub(r"[*?\[\]{}]", "", os.path.basename(path).split(".")[0])
        stem = re.sub(r"[^\w.-]+", "_", stem).strip("-_.")
        if not stem:
            stem = re.sub(r"[^\w.-]+", "_", os.path.basename(os.path.dirname(path))).strip("-_.")
        stem = stem or "targets"
        name, n = stem, 1
        while name in names:
            n += 1
            name = f"{stem}-{n}"
        names.append(name)
    return names


def open_tasks(targets: Any, *, task: str | None = None, **open_kw) -> dict[str, Records]:
    """Target sources as ``{task: records}``: a mapping names its tasks; a path or a list of
    paths is one task per path, named by :func:`task_names` (as ``--targets`` does); anything else
    (records, a ``Dataset``) is one task, named ``task`` (default ``"targets"``). ``open_kw``:
    :func:`open_records`' ``split``, ``subset`` and ``format``."""
    if isinstance(targets, Mapping):
        if task is not None:
            raise ConfigError("task= names a single task; a mapping already names its tasks")
        if not targets:
            raise DataError("no target task given")
        return {str(name): open_records(src, **open_kw) for name, src in targets.items()}
    paths = [targets] if isinstance(targets, (str, os.PathLike)) else targets
    if task is None and isinstance(paths, (list, tuple)) and paths and all(
            isinstance(p, (str, os.PathLike)) for p in paths):
        return {name: open_records(os.fspath(src), **open_kw)
                for name, src in zip(task_names(paths), paths)}
    return {task or "targets": open_records(targets, **open_kw)}
