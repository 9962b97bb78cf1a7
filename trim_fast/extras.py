"""What the optional extras of ``pip install trim-fast[...]`` bring, and the one error when one is
missing. The core install is the library (``Selector`` and the stages); the faces need more:

- ``plot``: matplotlib, for ``report.png`` and the evaluation's ``quality.png``;
- ``bm25``: bm25s, for the evaluation's BM25 baseline;
- ``faiss``: faiss-cpu, an index for the nearest-fingerprint fallback of ``--method paper``
  (torch search is the fallback: the default method never searches);
- ``cli``: the ``trim-fast`` command, all of its subcommands (plot, bm25 and pyyaml for
  ``--config``);
- ``all``: every one of the above.

Modules that need one import it inside the function that uses it, through :func:`require`.
"""
from __future__ import annotations

import importlib
import importlib.util

from trim_fast.errors import TrimError

# extra -> the modules it provides (import names), as pyproject.toml's optional-dependencies
EXTRAS = {
    "plot": ("matplotlib",),
    "bm25": ("bm25s",),
    "faiss": ("faiss",),
    "cli": ("matplotlib", "bm25s", "yaml"),
}


class MissingExtra(TrimError, ImportError):
    """A module of an optional extra is not installed (a :class:`TrimError`: the CLI reports it
    in one line with exit code 2, not a traceback)."""


def _hint(extra: str) -> str:
    return f"pip install 'trim-fast[{extra}]'"


def require(module: str, extra: str, what: str):
    """``module`` imported, or a :class:`MissingExtra` saying that ``what`` needs ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(f"{what} needs the '{module}' package: {_hint(extra)}") from err


def require_extra(extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` unless every module of ``extra`` is installed (checked without
    importing them)."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a blocked or broken module
            found = False
        if not found:
            missing.append(module)
    if missing:
        raise MissingExtra(f"{what} needs {', '.join(repr(m) for m in missing)}: {_hint(extra)}")


__all__ = ["EXTRAS", "MissingExtra", "require", "require_extra"]
