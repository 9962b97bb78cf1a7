"""Command-line flags generated from the config dataclasses (:mod:`trim_fast.config`): each field
becomes one flag with the help and choices its metadata states, so a default is written once."""
from __future__ import annotations

import argparse
import dataclasses

from trim_fast.errors import ConfigError
import typing


def add_settings(parser, cls, *, only=None, exclude=(), prefix: str = "", prefixed=()) -> None:
    """One flag per field of dataclass ``cls`` (help and choices from its metadata). Defaults
    are not set on the parser (``SUPPRESS``): the namespace holds only what was given, and the
    dataclass supplies the rest, so every default is stated once."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or f.name in exclude:
            continue
        meta = f.metadata
        name = meta.get("flag") or f.name.replace("_", "-")
        dest = f.name
        if f.name in prefixed:
            dest = f"{prefix.replace('-', '_')}{f.name}"
            name = name if name.startswith(prefix) else f"{prefix}{name}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(default) if isinstance(default, tuple) else default
        suffix = "" if default is None else f" (default: {shown})"  # None: the help says whose
        kw = dict(dest=dest, default=argparse.SUPPRESS, help=f"{meta.get('help', '')}{suffix}")
        tp = hints[f.name]
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            kw["type"] = {int: int, float: float}.get(args[0] if args else tp, str)
            if meta.get("choices"):
                kw["choices"] = meta["choices"]
            kw["metavar"] = meta.get("metavar") or (None if meta.get("choices") else f.name.upper())
        group.add_argument(f"--{name}", **kw)


def build_settings(cls, values: dict, *, prefix: str = "", prefixed=(), base=None):
    """``cls`` from ``values`` (flags and config file), keyed by dest names."""
    kw = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}" if f.name in prefixed else f.name
        if key in values:
            kw[f.name] = values[key]
    try:
        return dataclasses.replace(base, **kw) if base is not None else cls(**kw)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # the dataclasses' own checks
        raise ConfigError(f"{cls.__name__}: {exc}") from None


__all__ = ["add_settings", "build_settings"]
