"""File readers: JSON Lines and JSON arrays (plain, gzip or zstd), read as bytes so a bad byte is
reported with its line and offset, and Parquet by record batches."""
from __future__ import annotations

import gzip
import io
import json
import os
from typing import Any

from trim_fast.data.formats import DataError
from trim_fast.data.readers import MAX_DEPTH, _Reader, _refuse_lone_surrogates
from trim_fast.digests import jsonl_line_digest

_MAGIC = {b"\x1f\x8b": ("gzip-compressed", ".gz"), b"\x28\xb5\x2f\xfd": ("zstd-compressed", ".zst"),
          b"PAR1": ("a Parquet file", None)}
_BOM = b"\xef\xbb\xbf"


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
            for batch in pf.iter_batches(batch_size=self.batch):
                # to_pylist keeps bytes as bytes and NaN as float NaN: raw stays as given
                for record in batch.to_pylist():
                    row += 1
                    yield row, record, None
        except OSError as exc:
            raise DataError(f"{self.name}: cannot read row {row + 1}: {exc}") from exc
        finally:
            pf.close()
