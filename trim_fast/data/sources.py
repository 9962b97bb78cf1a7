"""Where records come from: files, shards, ``datasets`` folders and objects, the hub, lists.

:func:`open_records` resolves a source (or a list of them) into a :class:`Records`: a
re-iterable, streaming sequence of :class:`~trim_fast.data.formats.Example`. Resolving checks
that files exist and have a supported type; records are read only when iterated, and every
iteration streams from the start:

- JSONL line by line (also ``.jsonl.gz``, ``.jsonl.zst`` and the same for ``.json``), read as
  bytes so a non-UTF-8 byte is reported with its line and offset;
- a ``.json`` file holding a JSON array is the one input loaded whole into memory (the json
  module cannot stream an array's elements); its records are numbered by position in the array
  (``Example.line`` is the element's 1-based index, a JSON syntax error gives the text line); a
  ``.json`` file of JSON Lines streams like ``.jsonl``;
- Parquet by record batches;
- ``datasets`` (a ``save_to_disk`` folder, a ``Dataset``/``IterableDataset`` object, a hub
  dataset streamed with ``streaming=True``) by iteration.

The network is used only when a hub dataset id is named, and a WARNING on logger
``trim_fast.data`` says so before the first request. A name that looks like a path (starts with
``./``, ``../``, ``/`` or ``~``, has a data-file extension, or whose first component is an
existing local directory) and does not exist is "no such file", never a hub request.
"""
from __future__ import annotations

import glob as globlib
import gzip
import io
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

from trim_fast._notice import must_see
from trim_fast.hub import is_hub_id
from trim_fast.digests import code_digest, jsonl_line_digest
from trim_fast.errors import ConfigError
from trim_fast.data.formats import (
    CUSTOM_FORMAT, FORMATS, DataError, Example, ToMessages, detect_format,
    matching_formats, record_to_example, unknown_format_message)

log = logging.getLogger("trim_fast.data")

# suffix (lower case) -> (reader kind, compression)
_FILE_TYPES = {
    ".jsonl": ("jsonl", None), ".json": ("json", None), ".parquet": ("parquet", None),
    ".jsonl.gz": ("jsonl", "gzip"), ".json.gz": ("json", "gzip"),
    ".jsonl.zst": ("jsonl", "zstd"), ".json.zst": ("json", "zstd"),
}
SUPPORTED_FILES = tuple(_FILE_TYPES)
_MAGIC = {b"\x1f\x8b": ("gzip-compressed", ".gz"), b"\x28\xb5\x2f\xfd": ("zstd-compressed", ".zst"),
          b"PAR1": ("a Parquet file", None)}
_BOM = b"\xef\xbb\xbf"
_BATCH = 1024


def _supported() -> str:
    return (", ".join(SUPPORTED_FILES) + ", a glob of those, a datasets save_to_disk folder or "
            "a hub dataset id")


# ----------------------------------------------------------------------------- readers
# A reader is one unit with a display name; rows() yields (line_or_row, record, digest | None).

class _Reader:
    kind = ""
    name = ""  # Example.source
    split: str | None = None
    subset: str | None = None
    container = "source"  # word used in "record is not in the <container>'s format"
    deep = True  # may the record just yielded nest deeper than MAX_DEPTH? (JSON text: a cheap count)

    def rows(self) -> Iterator[tuple[int, Any, bytes | None]]:
        raise NotImplementedError

    def check_text(self, record: Any, where: str) -> None:
        """Refuse a record holding a lone surrogate anywhere (valid JSON: ``"\\ud800"``, but not
        Unicode text: it can be neither tokenized nor written back as UTF-8). Python objects
        can hold one anywhere; readers of Arrow data (always UTF-8) skip the walk, and JSON
        readers take it only for text that has a ``\\ud...`` escape."""
        _refuse_lone_surrogates(record, where)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.name, "split": self.split, "subset": self.subset}


def _refuse_lone_surrogates(record: Any, where: str) -> None:
    found = _lone_surrogate(record)
    if found is None:
        return
    path, char, at = found
    if char is None:  # in a field name
        raise DataError(f"{where}: the field name {path!r} holds a lone surrogate, which is not "
                        "valid Unicode text; fix the record")
    raise DataError(f"{where}: field {path!r} holds {char!r} at character {at}, a lone surrogate "
                    "that is not valid Unicode text (it can be neither tokenized nor written "
                    "back as UTF-8); fix the record")


def _lone_surrogate(value: Any) -> tuple[str, str | None, int] | None:
    """``(field path, the character, its index)`` of the first lone surrogate, else None."""
    if isinstance(value, str):
        if value.isascii():  # O(1) in CPython
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return "", value[exc.start], exc.start
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and _lone_surrogate(k) is not None:
                return str(k.encode("utf-8", "backslashreplace"), "ascii"), None, 0
            found = _lone_surrogate(v)
            if found is not None:
                return (_field_path(str(k), found[0]),) + found[1:]
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _lone_surrogate(v)
            if found is not None:
                return (_field_path(f"[{i}]", found[0]),) + found[1:]
    return None


MAX_DEPTH = 100  # nesting of lists and dicts in a record; deeper ones are refused when read


def _refuse_deep(record: Any, where: str, maybe: bool = True) -> None:
    """Refuse a record nested deeper than ``MAX_DEPTH`` (valid JSON can nest ~1000 deep): writing
    it back, digesting it and rendering tools recurse, and would fail after scoring (issue 20)."""
    if not maybe:
        return
    stack = [(record, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise DataError(f"{where}: the record nests lists/objects more than {MAX_DEPTH} deep; "
                            "trim_fast refuses such records (they cannot be written back safely); "
                            "flatten or drop the deep field")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


def _field_path(head: str, rest: str) -> str:
    """``messages`` + ``[0].content`` -> ``messages[0].content``."""
    return head if not rest else head + rest if rest.startswith("[") else f"{head}.{rest}"


def _open_binary(path: str, compression: str | None):
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "zstd":
        import zstandard

        fh = open(path, "rb")
        # read_across_frames: a .zst made of several frames (e.g. concatenated shards) is one file
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True,
                                                           closefd=True)
        return io.BufferedReader(reader)
    return open(path, "rb")


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE = 0x184D2A50  # ... 0x184D2A5F


def _refuse_cut_zstd(path: str) -> None:
    """A .zst file must be whole frames: the decompressor reads a file cut at a block boundary
    as a shorter stream without an error, so walk the frame and block headers (no decompression:
    a seek per block) and refuse a file that ends inside a frame."""
    size = os.path.getsize(path)

    def cut(why: str) -> DataError:
        return DataError(f"{path}: the zstd file is truncated ({why}; {size} bytes); the file "
                         "was cut short (an interrupted copy or download?): fetch or compress it again")

    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            f.seek(pos)
            head = f.read(14)
            if len(head) < 4:
                raise cut(f"{len(head)} stray byte(s) at byte {pos}")
            magic = int.from_bytes(head[:4], "little")
            if magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE:
                if len(head) < 8:
                    raise cut(f"a skippable frame's header cut at byte {pos}")
                pos += 8 + int.from_bytes(head[4:8], "little")
                if pos > size:
                    raise cut("a skippable frame ends past the end of the file")
                continue
            if magic != _ZSTD_MAGIC:
                raise DataError(f"{path}: not a zstd file at byte {pos} (magic {head[:4].hex()})")
            if len(head) < 5:
                raise cut(f"a frame header cut at byte {pos}")
            desc = head[4]
            single = desc >> 5 & 1
            fcs = (0 if not single else 1, 2, 4, 8)[desc >> 6]
            header = 5 + (0 if single else 1) + (0, 1, 2, 4)[desc & 3] + fcs
            checksum = 4 if desc >> 2 & 1 else 0
            pos += header
            while True:
                f.seek(pos)
                block = f.read(3)
                if len(block) < 3:
                    raise cut("it ends inside a frame, before its last block")
                b = int.from_bytes(block, "little")
                last, kind, bsize = b & 1, b >> 1 & 3, b >> 3
                pos += 3 + (1 if kind == 1 else bsize)
                if pos > size:
                    raise cut("its last block is incomplete")
                if last:
                    break
            pos += checksum
            if pos > size:
                raise cut("the frame's checksum is missing")


def _read_errors(compression: str | None) -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError]  # gzip.BadGzipFile is an OSError
    if compression == "zstd":
        import zstandard

        errors.append(zstandard.ZstdError)
    return tuple(errors)


class _JsonFile(_Reader):
    """JSONL, or a ``.json`` file holding either a JSON array or JSON Lines."""

    container = "file"

    def __init__(self, path: str, kind: str, compression: str | None):
        self.name, self.kind, self.compression = path, kind, compression
        self._escapes = False  # does the row just yielded have a \\ud... escape in its text?
        if compression is None:
            _refuse_wrong_suffix(path)

    def check_text(self, record: Any, where: str) -> None:
        # valid UTF-8 text decodes to valid Unicode: only a JSON escape can make a lone surrogate
        if self._escapes:
            _refuse_lone_surrogates(record, where)

    def describe(self) -> dict[str, Any]:
        return dict(super().describe(), compression=self.compression)

    def _is_array(self) -> bool:
        if self.kind != "json":
            return False
        with _open_binary(self.name, self.compression) as f:
            head = f.read(4096).removeprefix(_BOM).lstrip()
            while not head:  # whitespace longer than the first read
                chunk = f.read(4096)
                if not chunk:
                    return False
                head = chunk.lstrip()
        return head[:1] == b"["

    def rows(self):
        errors = _read_errors(self.compression)
        if self.compression == "zstd":
            _refuse_cut_zstd(self.name)
        try:
            if self._is_array():
                yield from self._array_rows()
            else:
                yield from self._line_rows()
        except errors as exc:
            raise DataError(f"{self.name}: cannot read the file ({self.compression or 'plain'}): "
                            f"{exc}") from exc

    def _line_rows(self):
        where_bytes = "of the decompressed text" if self.compression else "of the file"
        with _open_binary(self.name, self.compression) as f:
            offset = 0
            for line_no, raw in enumerate(f, start=1):
                body = raw.rstrip(b"\r\n")
                if line_no == 1 and body.startswith(_BOM):
                    body, start = body[len(_BOM):], len(_BOM)
                else:
                    start = 0
                if body.strip():
                    try:
                        text = body.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise DataError(
                            f"{self.name}:{line_no}: not UTF-8 text: byte 0x{body[exc.start]:02x} "
                            f"at byte {exc.start + start} of the line (byte "
                            f"{offset + start + exc.start} {where_bytes}); save the file as "
                            "UTF-8") from None
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError as exc:
                        hint = (" (a .json file must hold a JSON array of records or one record "
                                "per line)" if self.kind == "json" else "")
                        raise DataError(f"{self.name}:{line_no}: malformed JSON ({exc.msg} at "
                                        f"column {exc.colno}){hint}") from None
                    self._escapes = "\\ud" in text or "\\uD" in text
                    self.deep = text.count("[") + text.count("{") > MAX_DEPTH
                    yield line_no, record, jsonl_line_digest(body)
                offset += len(raw)

    def _array_rows(self):
        with _open_binary(self.name, self.compression) as f:
            data = f.read()  # a JSON array cannot be streamed with the json module
        data = data.removeprefix(_BOM)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1)
            raise DataError(f"{self.name}:{line}: not UTF-8 text: byte 0x{data[exc.start]:02x} at "
                            f"byte {col} of the line (byte {exc.start} of the file); save the "
                            "file as UTF-8") from None
        del data
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{self.name}:{exc.lineno}: malformed JSON ({exc.msg} at column "
                            f"{exc.colno})") from None
        if not isinstance(records, list):
            raise DataError(f"{self.name}: a .json file must hold a JSON array of records or "
                            "one record per line")
        self._escapes = "\\ud" in text or "\\uD" in text
        self.deep = text.count("[") + text.count("{") > MAX_DEPTH
        del text
        for row, record in enumerate(records, start=1):
            yield row, record, None


def _refuse_wrong_suffix(path: str) -> None:
    """A compressed or Parquet file named .jsonl/.json is refused with the name it needs."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file: {exc}") from exc
    for magic, (what, suffix) in _MAGIC.items():
        if head.startswith(magic):
            base = path[: path.lower().rindex(".json")]
            right = path + suffix if suffix else base + ".parquet"
            raise DataError(f"{path}: looks {what}; name it {os.path.basename(right)}")


class _ParquetFile(_Reader):
    kind, container = "parquet", "file"
    deep = False  # Arrow schemas are not nested a hundred deep

    def check_text(self, record: Any, where: str) -> None:
        pass  # Arrow strings are UTF-8

    def __init__(self, path: str):
        self.name = path
        self._open().close()  # fail early on a file that is not Parquet

    def _open(self):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.name)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
            raise DataError(f"{self.name}: not a readable Parquet file ({exc})") from exc

    def rows(self):
        pf = self._open()
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=_BATCH):
                # to_pylist keeps bytes as bytes and NaN as float NaN: raw stays as given
                for record in batch.to_pylist():
                    row += 1
                    yield row, record, None
        except OSError as exc:
            raise DataError(f"{self.name}: cannot read row {row + 1}: {exc}") from exc
        finally:
            pf.close()


def _dataset_rows(ds) -> Iterator[dict]:
    """Rows of a datasets object: map-style by Arrow batches (fast), iterable by iteration."""
    import datasets

    if isinstance(ds, datasets.Dataset) and ds.format.get("type") == "custom":
        yield from ds  # with_transform / set_transform: the rows as the user sees them
    elif isinstance(ds, datasets.Dataset):
        for table in ds.with_format("arrow").iter(batch_size=_BATCH):
            yield from table.to_pylist()
    else:
        yield from ds


def _pick_split(obj, split: str | None, name: str):
    import datasets

    if isinstance(obj, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split is None:
            raise DataError(f"{name}: holds several splits ({', '.join(obj)}); pass split=")
        if split not in obj:
            raise DataError(f"{name}: no split {split!r}; it has {', '.join(obj)}")
        return obj[split]
    return obj


class _DiskDataset(_Reader):
    kind = "disk"
    deep = False

    def check_text(self, record: Any, where: str) -> None:
        pass  # Arrow strings are UTF-8

    def __init__(self, path: str, split: str | None):
        self.name, self.split = path, split
        self._ds = None

    def dataset(self):
        if self._ds is None:
            import datasets

            try:
                loaded = datasets.load_from_disk(self.name)
            except Exception as exc:  # noqa: BLE001 - datasets raises many types
                raise DataError(f"{self.name}: cannot load the save_to_disk folder: {exc}") from exc
            self._ds = _pick_split(loaded, self.split, self.name)
        return self._ds

    def rows(self):
        for row, record in enumerate(_dataset_rows(self.dataset()), start=1):
            yield row, record, None


class _HubDataset(_Reader):
    kind = "hub"

    def __init__(self, name: str, split: str | None, subset: str | None):
        if split is None:  # refuse before any request
            raise DataError(f"{name}: a hub dataset needs split= (e.g. 'train')")
        self.name, self.split, self.subset = name, split, subset
        self._ds = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "split": self.split, "subset": self.subset}

    def rows(self):
        from trim_fast.hub import bounded_hub_access

        with bounded_hub_access("dataset", self.name, announce=False):
            yield from self._rows()

    def _rows(self):
        import datasets

        if self._ds is None:
            from huggingface_hub import constants

            must_see(log, "using the network: streaming split %r%s of the Hugging Face hub dataset "
                     "%r from %s", self.split, f" (subset {self.subset!r})" if self.subset
                     else "", self.name, constants.ENDPOINT)
            try:
                self._ds = datasets.load_dataset(self.name, self.subset, split=self.split,
                                                 streaming=True)
            except Exception as exc:  # noqa: BLE001 - network, auth, not found, ...
                raise DataError(f"{self.name}: cannot open the hub dataset (split {self.split!r}"
                                f", subset {self.subset!r}): {type(exc).__name__}: {exc}") from exc
        it = iter(self._ds)
        row = 0
        while True:
            try:
                record = next(it)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - a stream can fail mid-way
                raise DataError(f"{self.name}: reading the hub dataset failed at row {row + 1}: "
                                f"{type(exc).__name__}: {exc}") from exc
            row += 1
            yield row, record, None


class _DatasetObject(_Reader):
    kind = "dataset"

    def __init__(self, ds, name: str, split: str | None):
        self.name, self.split = name, split
        self._ds = _pick_split(ds, split, name)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "split": self.split, "subset": None,
                "rows": getattr(self._ds, "num_rows", None)}

    def rows(self):
        for row, record in enumerate(_dataset_rows(self._ds), start=1):
            yield row, record, None


class _InMemory(_Reader):
    kind = "records"

    def __init__(self, records: Sequence[dict], name: str):
        self.name, self._records = name, records

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "split": None, "subset": None,
                "rows": len(self._records)}

    def rows(self):
        for row, record in enumerate(self._records, start=1):
            yield row, record, None


class _Examples(_Reader):
    """Examples already read (e.g. a sample of another source): passed through as they are."""

    kind = "examples"

    def __init__(self, examples: Sequence[Example], name: str):
        self.name, self.examples = name, list(examples)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "split": None, "subset": None,
                "rows": len(self.examples),
                "from": sorted({f"{ex.source}" for ex in self.examples})}

    def rows(self):
        for row, ex in enumerate(self.examples, start=1):
            yield row, ex, None


# ----------------------------------------------------------------------------- resolving

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


# ----------------------------------------------------------------------------- Records

class Records:
    """Examples of one or more sources, in order; re-iterable (each pass streams anew).

    Ids must be unique across all sources; a repeat is a :class:`DataError` naming both places.
    """

    def __init__(self, entries: list[_Entry], *, format: str | None = None,
                 to_messages: ToMessages | None = None):
        self._entries = entries
        self._format = format
        self._to_messages = to_messages
        self._detected: dict[int, str] = {}

    def __iter__(self) -> Iterator[Example]:
        return self._iter(None)

    def _iter(self, stop_at: int | None) -> Iterator[Example]:
        seen: set[int] = set()  # hashes of ids; a hit is confirmed by a second pass
        position = 0
        for e_i, entry in enumerate(self._entries):
            for ex in self._examples(e_i, entry.reader):
                key = hash(ex.id)
                if key in seen:
                    first = self._first_place(ex.id, position)
                    if first is not None:
                        raise DataError(f"{ex.source}:{ex.line}: duplicate id {ex.id!r} (first "
                                        f"seen at {first})")
                seen.add(key)
                yield ex
                position += 1
                if stop_at is not None and position > stop_at:
                    return

    def _first_place(self, rid: str, before: int) -> str | None:
        for ex in self._iter(before - 1):
            if ex.id == rid:
                return f"{ex.source}:{ex.line}"
        return None

    def _examples(self, e_i: int, reader: _Reader) -> Iterator[Example]:
        if isinstance(reader, _Examples):
            yield from reader.examples
            return
        fmt = self._format
        n = 0
        for line, record, digest in reader.rows():
            where = f"{reader.name}:{line}"
            if record is None or (self._to_messages is None and not isinstance(record, dict)):
                raise DataError(f"{where}: a record must be a JSON object, got "
                                f"{type(record).__name__}")
            if self._to_messages is None:
                _refuse_deep(record, where, reader.deep)
                shape = detect_format(record)
                if self._format is None:
                    # every record, not only the first: a later record with the fields of two
                    # shapes would be read as one of them, the other's fields silently ignored
                    shapes = matching_formats(record)
                    if len(shapes) > 1:  # e.g. a tokenized chat dataset keeps its messages
                        raise DataError(f"{where}: the record has the fields of more than one "
                                        f"shape ({', '.join(shapes)}); say which to read with "
                                        f"--format (format= in Python), e.g. --format {shapes[0]}")
                if fmt is None:
                    if shape is None:
                        raise DataError(f"{where}: {unknown_format_message(record)}")
                    fmt = self._detected[e_i] = shape
                elif self._format is None and shape != fmt:
                    if shape is None:
                        raise DataError(f"{where}: {unknown_format_message(record)}")
                    raise DataError(f"{where}: record is not in the {reader.container}'s format "
                                    f"({fmt}, detected from its first record)")
            ex = record_to_example(record, fmt, source=reader.name, line=line,
                                   to_messages=self._to_messages)
            reader.check_text(record, where)  # after the shape's own, more specific, checks
            ex._digest = digest
            n += 1
            yield ex
        if n == 0:
            what = "empty file" if reader.container == "file" else "empty source"
            raise DataError(f"{reader.name}: {what} (no records)")

    def count(self) -> int:
        """Number of examples (one full streaming pass, validating every record)."""
        return sum(1 for _ in self)

    def take(self, indices: Iterable[int]) -> list[Example]:
        """The examples at these 0-based positions, in the order given (one streaming pass)."""
        indices = [int(i) for i in indices]
        if not indices:
            return []
        if min(indices) < 0:
            raise IndexError(f"take: negative position {min(indices)}")
        wanted = set(indices)
        found: dict[int, Example] = {}
        n = 0
        for n, ex in enumerate(self._iter(max(indices)), start=1):
            if n - 1 in wanted:
                found[n - 1] = ex
        missing = [i for i in indices if i not in found]
        if missing:
            raise IndexError(f"take: position {missing[0]} is past the end ({n} examples)")
        return [found[i] for i in indices]

    def describe(self) -> list[dict[str, Any]]:
        """JSON-able description of each source, for run manifests.

        ``format`` is the forced one, ``custom`` with a ``to_messages`` hook, else the shape
        detected from the first record (read now for local sources; for a hub dataset only once
        it has been iterated, else ``None``).
        """
        out = []
        for e_i, entry in enumerate(self._entries):
            d = entry.reader.describe()
            if entry.glob is not None:
                d["glob"] = entry.glob
            d["format"] = self._format_of(e_i, entry.reader)
            out.append(d)
        return out

    def _format_of(self, e_i: int, reader: _Reader) -> str | None:
        if self._to_messages is not None:  # the hook by name and code: another hook, another run
            return f"{CUSTOM_FORMAT}:{_callable_identity(self._to_messages)}"
        if self._format is not None:
            return self._format
        if e_i not in self._detected and not isinstance(reader, _HubDataset):
            for _line, record, _digest in reader.rows():
                if isinstance(record, dict):
                    self._detected[e_i] = detect_format(record)
                break
        return self._detected.get(e_i)

    @property
    def dataset(self):
        """The ``datasets.Dataset`` these records are, when they are exactly one (else None)."""
        if len(self._entries) == 1 and isinstance(self._entries[0].reader, _DatasetObject):
            return self._entries[0].reader._ds
        return None

    def __repr__(self) -> str:
        names = ", ".join(e.reader.name for e in self._entries[:3])
        more = f", ... ({len(self._entries)} sources)" if len(self._entries) > 3 else ""
        return f"Records({names}{more})"


def _callable_identity(fn) -> str:
    """``module.qualname`` and a digest of the function's code and constants, when it has them."""
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    code = getattr(fn, "__code__", None)
    if code is None:
        return name
    return f"{name}:{code_digest(code)}"


def open_records(source: Any, *, split: str | None = None, subset: str | None = None,
                 format: str | None = None, to_messages: ToMessages | None = None) -> Records:
    """Open one source, or a list of sources read in order, as :class:`Records`.

    ``source``: a path (``.jsonl``, ``.json``, ``.parquet``, ``.jsonl.gz``, ``.json.gz``,
    ``.jsonl.zst``, ``.json.zst``; extensions in any case), a glob of such files (sorted), a
    ``datasets`` ``save_to_disk`` folder, a Hugging Face hub dataset id (needs ``split``; uses the
    network, streaming), a list of dicts, a ``datasets`` ``Dataset`` / ``IterableDataset`` /
    ``DatasetDict`` (needs ``split``), or a list of any of these. ``split`` and ``subset`` apply
    to the sources that have splits / subsets. ``format`` forces the record shape (one of
    :data:`~trim_fast.data.formats.FORMATS`) instead of detecting it per source;
    ``to_messages`` maps each record with the caller's own function (see ``formats``).

    Existence and file types are checked now; records are read when iterated. Only a ``.json``
    file holding a JSON array is loaded whole into memory.
    """
    if isinstance(source, Records):
        if split is not None or subset is not None or format is not None or to_messages is not None:
            raise ConfigError("open_records: a Records object is already opened; split, subset, "
                             "format and to_messages apply when it is opened")
        return source
    if format is not None and to_messages is not None:
        raise ConfigError("pass format= or to_messages=, not both")
    if format is not None and format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    if isinstance(source, (list, tuple)) and not all(isinstance(r, (dict, Example)) for r in source):
        if any(isinstance(r, (dict, Example)) for r in source):
            i, item = next((i, r) for i, r in enumerate(source) if not isinstance(r, (dict, Example)))
            if item is None or not isinstance(item, (str, os.PathLike, list, tuple)) \
                    and not _is_datasets_object(item):
                raise DataError(f"open_records: item {i} of the list of records is "
                                f"{type(item).__name__}, not a record (a dict)")
            raise DataError("open_records: a list mixes records (dicts) and other sources; wrap "
                            "the records in their own list")
        text = next((r for r in source if isinstance(r, str) and not os.path.exists(r)
                     and (any(c.isspace() for c in r) or len(r) > 200)), None)
        if text is not None:
            raise DataError(f"open_records: {text[:60]!r} is text, not a path or dataset id: a pool "
                            "is a list of records (dicts such as {'text': ...} or {'messages': "
                            "[...]}) or a list of paths")
        entries = [e for i, s in enumerate(source)
                   for e in _resolve(s, split, subset, i if _needs_index(s) else None)]
    else:
        if isinstance(source, (list, tuple)) and not source:
            raise DataError("open_records: nothing to read (an empty list)")
        entries = _resolve(source, split, subset, None)
    return Records(entries, format=format, to_messages=to_messages)


def _needs_index(source: Any) -> bool:
    """In a list of sources, unnamed in-memory sources get their position in their name."""
    return not isinstance(source, (str, os.PathLike))


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
