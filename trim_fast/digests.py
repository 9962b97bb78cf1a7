"""Every digest trim_fast computes, each named by what it identifies.

Two families, one per purpose:

- **sha256** for the identity of what a run depends on (weights, tokenizer, a bank, the run's
  settings): few calls, written into manifests and file headers, compared across machines;
- **blake2b** for record content, per-batch keys and file checksums: one call per record or
  batch, where speed matters; a ``person`` string keeps the kinds of input apart.

These values are stored in work directories, banks and score tables and identify content across
runs: changing an algorithm, a person string or the bytes fed in invalidates every user's cache.
tests/test_digests.py pins them.
"""
from __future__ import annotations

import datetime
import decimal
import hashlib
import json
import math
import struct
import uuid
from typing import Any, Iterable

from trim_fast.errors import DataError

# ----------------------------------------------------------------------------- record content
# (blake2b, 16 bytes)


def jsonl_line_digest(line: bytes) -> bytes:
    """A record read from a JSONL line: the line's bytes (without its line ending)."""
    return hashlib.blake2b(line, digest_size=16, person=b"trimfast-jsonl").digest()


def value_digest(value: Any) -> bytes:
    """A record (or any value in one) by a canonical serialisation.

    Type-tagged and length-prefixed, so ``1`` / ``1.0`` / ``"1"`` / ``True`` and ``["ab"]`` /
    ``["a", "b"]`` differ. Dict keys keep their order (the record is written back in that
    order). Every NaN is one value; bytes, numpy and Arrow scalars, numpy arrays, dates and
    decimals are handled; a value of any other type is a :class:`DataError` (its repr may not
    be stable).
    """
    h = hashlib.blake2b(digest_size=16, person=b"trimfast-value")
    _feed(h, value)
    return h.digest()


def _feed(h, v: Any) -> None:  # noqa: C901 - one branch per type
    if v is None:
        h.update(b"N")
    elif v is True or v is False:
        h.update(b"T" if v else b"F")
    elif isinstance(v, int):
        h.update(b"i%d;" % v)
    elif isinstance(v, float):
        h.update(b"fnan" if math.isnan(v) else b"f" + struct.pack(">d", v))
    elif isinstance(v, str):
        b = v.encode("utf-8", "surrogatepass")  # a lone surrogate still hashes
        h.update(b"s%d:" % len(b))
        h.update(b)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        h.update(b"b%d:" % len(b))
        h.update(b)
    elif isinstance(v, dict):
        h.update(b"d%d:" % len(v))
        for k, x in v.items():
            _feed(h, k)
            _feed(h, x)
    elif isinstance(v, (list, tuple)):
        h.update(b"l%d:" % len(v))
        for x in v:
            _feed(h, x)
    elif isinstance(v, (datetime.date, datetime.time)):  # datetime is a date
        h.update(b"t" + type(v).__name__.encode() + b":" + v.isoformat().encode() + b";")
    elif isinstance(v, (datetime.timedelta, decimal.Decimal, uuid.UUID)):
        h.update(b"o" + type(v).__name__.encode() + b":" + str(v).encode() + b";")
    elif hasattr(v, "tolist") and type(v).__module__.startswith("numpy"):
        _feed(h, v.tolist())  # numpy scalar or array -> Python values
    elif hasattr(v, "as_py") and type(v).__module__.startswith("pyarrow"):
        _feed(h, v.as_py())
    else:
        raise DataError(f"cannot digest a value of type {type(v).__module__}.{type(v).__name__}")


def records_digest(record_digests: Iterable[bytes]) -> str:
    """An ordered run of records (a pool chunk, a target set), from their digests."""
    h = hashlib.blake2b(digest_size=16)
    for d in record_digests:
        h.update(d)
    return h.hexdigest()


def pool_digest(chunk_digests: Iterable[str]) -> str:
    """A whole pool, from its chunks' :func:`records_digest` values in order."""
    return hashlib.blake2b("".join(chunk_digests).encode(), digest_size=16).hexdigest()


def code_digest(code) -> str:
    """A function's code object: its bytecode and constants (8 bytes, hex)."""
    return hashlib.blake2b(code.co_code + repr(code.co_consts).encode(), digest_size=8).hexdigest()


# ----------------------------------------------------------------------------- keys and checksums
# (blake2b, 16 bytes)


def batch_key(ids: bytes, shape: tuple[int, ...], tag: bytes = b"") -> bytes:
    """A batch of token ids (their bytes and shape) and what else its states depend on: the
    forward cache's key within a process."""
    return hashlib.blake2b(ids + str(tuple(shape)).encode() + tag, digest_size=16).digest()


def file_checksum(parts: Iterable[bytes]) -> str:
    """The tensors of a work-directory chunk file (names, dtypes, shapes and bytes, as fed)."""
    h = hashlib.blake2b(digest_size=16, person=b"trimfast-chunk")
    for p in parts:
        h.update(p)
    return h.hexdigest()


# ----------------------------------------------------------------------------- identities (sha256)


def weights_identity(parts: Iterable[bytes]) -> str:
    """A model's forward weights, from the summaries ``models.digest.weights_digest`` feeds."""
    h = hashlib.sha256(b"trim_fast weights v1\0")
    for p in parts:
        h.update(p)
    return "w1:" + h.hexdigest()


def tokenizer_identity(vocab: dict[str, int], special_tokens: Iterable[str],
                       chat_template: str | None) -> str:
    """A tokenizer: its vocabulary, special tokens and chat template (16 hex)."""
    h = hashlib.sha256()
    h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    h.update(json.dumps(sorted(special_tokens)).encode())
    h.update((chat_template or "").encode())
    return h.hexdigest()[:16]


def bank_identity(arrays: Iterable[bytes]) -> str:
    """A fingerprint bank's content (classes, vectors, center bytes, as fed; 16 hex)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(a)
    return h.hexdigest()[:16]


def settings_identity(identity: dict) -> str:
    """A run's identity (a JSON-able dict of what its results depend on; 16 hex)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


__all__ = ["jsonl_line_digest", "value_digest", "records_digest", "pool_digest", "code_digest",
           "batch_key", "file_checksum", "weights_identity", "tokenizer_identity",
           "bank_identity", "settings_identity"]
