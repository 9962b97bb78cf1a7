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

What a source is: :mod:`~trim_fast.data.resolve`; the readers: :mod:`~trim_fast.data.files`
and :mod:`~trim_fast.data.readers`; the records: :mod:`~trim_fast.data.records`.
"""
from __future__ import annotations

import os
from typing import Any

from trim_fast.data.formats import FORMATS, DataError, Example, ToMessages
from trim_fast.data.records import Records
from trim_fast.data.resolve import _is_datasets_object, _resolve
from trim_fast.errors import ConfigError


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
