"""Source resolution: what a name or object given as a source is (a data file by its suffix, a
glob, a ``datasets`` folder or object, a hub dataset id, a list of records) and the readers for
it. :func:`file_kind` is the one classifier of data files (run outputs use it too)."""
from __future__ import annotations

import glob as globlib
import os
import sys
from dataclasses import dataclass
from typing import Any

from trim_fast.data.files import _JsonFile, _ParquetFile
from trim_fast.data.formats import DataError, Example
from trim_fast.data.readers import (_DatasetObject, _DiskDataset, _Examples, _HubDataset,
                                    _InMemory, _Reader)
from trim_fast.hub import is_hub_id

# suffix (lower case) -> (reader kind, compression)
_FILE_TYPES = {
    ".jsonl": ("jsonl", None), ".json": ("json", None), ".parquet": ("parquet", None),
    ".jsonl.gz": ("jsonl", "gzip"), ".json.gz": ("json", "gzip"),
    ".jsonl.zst": ("jsonl", "zstd"), ".json.zst": ("json", "zstd"),
}
SUPPORTED_FILES = tuple(_FILE_TYPES)


def _supported() -> str:
    return (", ".join(SUPPORTED_FILES) + ", a glob of those, a datasets save_to_disk folder or "
            "a hub dataset id")


def _is_datasets_object(obj: Any) -> bool:
    if "datasets" not in sys.modules:  # a datasets object implies datasets was imported
        return False
    import datasets

    return isinstance(obj, (datasets.Dataset, datasets.IterableDataset, datasets.DatasetDict,
                            datasets.IterableDatasetDict))


def _dataset_name(ds) -> str:
    info = getattr(ds, "info", None)
    if info is None and hasattr(ds, "values"):  # a DatasetDict: its first split's info
        info = getattr(next(iter(ds.values()), None), "info", None)
    return (getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
            or "dataset")


def _is_disk_dataset(path: str) -> bool:
    return (os.path.isfile(os.path.join(path, "dataset_dict.json"))
            or os.path.isfile(os.path.join(path, "state.json")))


def file_kind(path: str) -> tuple[str, str | None] | None:
    """``(reader kind, compression)`` of a data file by its name (``"jsonl"``, ``"json"`` or
    ``"parquet"``), or ``None`` for a name of no supported type."""
    lower = str(path).lower()
    # longest suffix first: ".jsonl.gz" before ".gz"-less ".jsonl"
    for suffix in sorted(_FILE_TYPES, key=len, reverse=True):
        if lower.endswith(suffix):
            return _FILE_TYPES[suffix]
    return None


def _file_reader(path: str) -> _Reader:
    found = file_kind(path)
    if found is None:
        raise DataError(f"{path}: unknown file type; supported: {_supported()}")
    kind, compression = found
    if kind == "parquet":
        return _ParquetFile(path)
    return _JsonFile(path, kind, compression)


def _path_readers(path: str, split: str | None) -> list[_Reader]:
    """Readers for an existing path (file or folder)."""
    if os.path.isdir(path):
        if _is_disk_dataset(path):
            return [_DiskDataset(path, split)]
        raise DataError(f"{path}: is a directory but not a datasets save_to_disk folder (no "
                        "dataset_dict.json or state.json in it); to read the files in it pass a "
                        f"glob such as '{os.path.join(path, '*.jsonl')}'")
    return [_file_reader(path)]


def _string_readers(name: str, split: str | None,
                    subset: str | None) -> tuple[list[_Reader], str | None]:
    """Readers for a path, a glob or a hub id; also the glob pattern when it was one."""
    expanded = os.path.expanduser(name)
    if os.path.exists(expanded):
        return _path_readers(name if expanded == name else expanded, split), None
    if any(c in name for c in "*?["):
        matches = _glob(expanded)
        if not matches:
            raise DataError(f"{name}: no file matches this pattern")
        readers = []
        for m in matches:
            readers += _path_readers(m, split)
        return readers, name
    if not is_hub_id(name):
        raise DataError(f"{name}: no such file or directory")
    return [_HubDataset(name, split, subset)], None


def _glob(pattern: str) -> list[str]:
    """The paths a glob matches, sorted, each real file once: the first spelling (in sorted
    order) of each resolved path. ``**`` walks directories through symlinks but enters each
    real directory once, so a symlink loop (``ln -s .. sub/up``) neither repeats records nor
    runs away."""
    if "**" not in pattern:
        return _first_spellings(sorted(globlib.glob(pattern)))
    parts = pattern.split(os.sep)
    first = next(i for i, p in enumerate(parts) if globlib.has_magic(p))
    root = os.sep.join(parts[:first]) or (os.sep if pattern.startswith(os.sep) else os.curdir)
    rest = parts[first:]
    found, entered = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in entered:
            dirnames[:] = []
            continue
        entered.add((st.st_dev, st.st_ino))
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        rel_parts = [] if rel == os.curdir else rel.split(os.sep)
        if any(p.startswith(".") for p in rel_parts) and not any(r.startswith(".") for r in rest):
            continue  # as glob: hidden folders only when the pattern names them
        for name in sorted(filenames + dirnames):
            if _glob_match(rest, rel_parts + [name]):
                found.append(os.path.join(dirpath, name) if dirpath != os.curdir or
                             pattern.startswith(os.curdir) else name)
    return _first_spellings(sorted(found))


def _glob_match(pattern: list[str], parts: list[str]) -> bool:
    """Path components against pattern components, ``**`` matching any number of them
    (none included); wildcards do not match a leading dot, as in glob."""
    import fnmatch

    if not pattern:
        return not parts
    head = pattern[0]
    if head == "**":
        return any(_glob_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1)
                   if not any(p.startswith(".") for p in parts[:i]))
    if not parts:
        return False
    if parts[0].startswith(".") and not head.startswith("."):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _glob_match(pattern[1:], parts[1:])


def _first_spellings(paths: list[str]) -> list[str]:
    seen, out = set(), []
    for p in paths:
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            out.append(p)
    return out


@dataclass
class _Entry:
    """One reader and how it was named (for describe)."""

    reader: _Reader
    glob: str | None = None


def _resolve(source: Any, split, subset, index: int | None) -> list[_Entry]:
    suffix = "" if index is None else f"[{index}]"
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        readers, pattern = _string_readers(source, split, subset)
        return [_Entry(r, pattern) for r in readers]
    if _is_datasets_object(source):
        return [_Entry(_DatasetObject(source, _dataset_name(source) + suffix, split))]
    if isinstance(source, (list, tuple)) and source and all(isinstance(r, Example) for r in source):
        return [_Entry(_Examples(source, "examples" + suffix))]
    if isinstance(source, (list, tuple)) and all(isinstance(r, dict) for r in source):
        return [_Entry(_InMemory(source, "records" + suffix))]
    raise DataError(f"open_records: cannot read a {type(source).__name__}; expected a path, a "
                    "glob, a hub dataset id, a list of dicts, a datasets object, or a list of "
                    "these")
