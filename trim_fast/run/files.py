"""Atomic writes: a file appears whole under its name or not at all (temp file + rename), so a
run killed at any point never leaves a half-written output, bank or shard."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[Any]:
    """Write to a temp file beside ``path`` and rename it in place only when the block succeeds."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-" + os.path.basename(path) + "-")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs are ordinary files
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if exc.filename is None:  # a failed write (disk full) names no file by itself
            raise type(exc)(exc.errno, exc.strerror or str(exc), path) from exc
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_safetensors_atomic(tensors: dict, path: str, metadata: dict[str, str]) -> None:
    """A safetensors file written through :func:`atomic_open` (fsync, rename, ordinary mode)."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    with atomic_open(path, "wb") as f:
        f.write(data)
