"""Readers of records that are not files: the unit every source resolves to (:class:`_Reader`, with
the checks every record gets when read), ``datasets`` folders and objects, hub datasets, lists.
File readers (JSON, JSONL, compressed, Parquet) are in :mod:`trim_fast.data.files`."""
from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

from trim_fast._notice import must_see
from trim_fast.data.formats import DataError, Example

log = logging.getLogger("trim_fast.data")


# A reader is one unit with a display name; rows() yields (line_or_row, record, digest | None).
class _Reader:
    kind = ""
    name = ""  # Example.source
    split: str | None = None
    subset: str | None = None
    container = "source"  # word used in "record is not in the <container>'s format"
    deep = True  # may the record just yielded nest deeper than MAX_DEPTH? (JSON text: a cheap count)
    batch = 1024  # rows per Arrow record batch (Parquet files, map-style datasets)

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


def _dataset_rows(ds, batch: int) -> Iterator[dict]:
    """Rows of a datasets object: map-style by Arrow batches (fast), iterable by iteration."""
    import datasets

    if isinstance(ds, datasets.Dataset) and ds.format.get("type") == "custom":
        yield from ds  # with_transform / set_transform: the rows as the user sees them
    elif isinstance(ds, datasets.Dataset):
        for table in ds.with_format("arrow").iter(batch_size=batch):
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
        for row, record in enumerate(_dataset_rows(self.dataset(), self.batch), start=1):
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
        for row, record in enumerate(_dataset_rows(self._ds, self.batch), start=1):
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
