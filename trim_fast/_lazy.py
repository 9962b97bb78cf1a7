"""Package exports imported on first use: importing one module of a package does not import the
others (so ``import trim_fast.ops`` pulls in no transformers, and no package imports its own
modules back)."""
from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """A module ``__getattr__`` for ``package``: ``exports`` maps a name to the module that
    defines it (absolute, or relative to ``package`` with a leading dot)."""
    def __getattr__(name):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = exports[name]
        value = getattr(importlib.import_module(package + module if module.startswith(".") else module), name)
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__
