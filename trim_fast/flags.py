"""Command-line flags generated from the config dataclasses (:mod:`trim_fast.config`): each field
becomes one flag with the help and choices its metadata states, so a default is written once. A
:class:`Flag` is also what a ``--config FILE`` key is checked against: one declaration serves
the parser and the file."""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing

from trim_fast.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Flag:
    """One flag: its value's ``dest``, its ``name`` (``--name``), the ``kind`` of its value (int,
    float, str, or bool for a switch), its ``choices``; ``repeat``: given once per value."""

    dest: str
    name: str
    kind: type = str
    help: str = ""
    choices: tuple | None = None
    metavar: str | None = None
    repeat: bool = False
    negatable: bool = False  # a switch with a --no- form (the config's booleans)

    def add_to(self, group) -> None:
        kw = dict(dest=self.dest, default=argparse.SUPPRESS, help=self.help)
        if self.kind is bool:
            kw["action"] = argparse.BooleanOptionalAction if self.negatable else "store_true"
        else:
            kw.update(type=self.kind, metavar=self.metavar, choices=self.choices,
                      action="append" if self.repeat else "store")
        group.add_argument(f"--{self.name}", **kw)

    def value(self, value, where: str):
        """A config file's value as the flag would have parsed it: typed, within its choices."""
        if self.repeat:
            return [dataclasses.replace(self, repeat=False).value(v, where)
                    for v in (value if isinstance(value, list) else [value])]
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true or false, got {value!r}")
            return value
        if value is None or isinstance(value, (list, dict)):
            raise ConfigError(f"{where}: expected one value, got {value!r}")
        if self.kind is int and isinstance(value, float):  # int(2.7) would be 2: refused like the flag
            raise ConfigError(f"{where}: {value!r} is not a valid int")
        try:
            value = self.kind(value if not isinstance(value, bool) else str(value).lower())
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {value!r} is not a valid {self.kind.__name__}") from None
        if self.choices and value not in self.choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, self.choices))}")
        return value



def setting_flags(cls, *, only=None, exclude=(), prefix: str = "", prefixed=()) -> list[Flag]:
    """One flag per field of dataclass ``cls`` (help and choices from its metadata); a field in
    ``prefixed`` gets ``prefix`` on its name and dest (it means something else unprefixed)."""
    hints = typing.get_type_hints(cls)
    flags = []
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
        tp = hints[f.name]
        if tp is bool:
            flags.append(Flag(dest, name, bool, f"{meta.get('help', '')}{suffix}", negatable=True))
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        choices = tuple(meta["choices"]) if meta.get("choices") else None
        flags.append(Flag(dest, name, {int: int, float: float}.get(args[0] if args else tp, str),
                          f"{meta.get('help', '')}{suffix}", choices,
                          meta.get("metavar") or (None if choices else f.name.upper())))
    return flags


def add_settings(parser, cls, **kw) -> list[Flag]:
    """The flags of :func:`setting_flags` on ``parser``, in a group named after ``cls``. Defaults
    are not set on the parser (``SUPPRESS``): the namespace holds only what was given, and the
    dataclass supplies the rest, so every default is stated once."""
    group = parser.add_argument_group(cls.__name__)
    flags = setting_flags(cls, **kw)
    for flag in flags:
        flag.add_to(group)
    return flags


def read_config_file(path: str, flags: list[Flag], command: str) -> dict:
    """``{dest: value}`` from a YAML or JSON mapping of flag names (``lora-r`` or ``lora_r``, or
    the dest) to values, each checked as its flag would parse it; errors name the file and key."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    is_json = path.lower().endswith(".json")
    try:
        if is_json:
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - json and yaml raise their own types
        raise ConfigError(f"--config {path}: not valid {'JSON' if is_json else 'YAML'} ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of flag names to values")
    known = {}
    for flag in flags:
        known[flag.dest] = known[flag.name.replace("-", "_")] = flag
    out = {}
    for key, value in data.items():
        flag = known.get(str(key).lstrip("-").replace("-", "_"))
        if flag is None:
            raise ConfigError(f"--config {path}: unknown setting {key!r} for '{command}'; known: "
                              f"{', '.join(sorted(known))}")
        out[flag.dest] = flag.value(value, f"--config {path}: {key}")
    return out


# The command line's flags that are not settings of a config dataclass, declared once for the
# parser and for the keys of --config FILE.
IO = {f.dest: f for f in (
    Flag("pool", "pool", repeat=True, metavar="SOURCE",
         help="candidate pool (repeatable): JSONL, JSON, Parquet, .jsonl.gz/.zst, a glob of shards, "
              "a save_to_disk folder or a hub dataset id"),
    Flag("targets", "targets", repeat=True, metavar="SOURCE",
         help="target examples, one task per source (repeatable); none: in-domain mode (a seeded "
              "sample of the pool)"),
    Flag("format", "format", help="record shape of every source, when detection is ambiguous"),
    Flag("split", "split", help="split of a hub dataset or DatasetDict folder"),
    Flag("subset", "subset", help="subset (config name) of a hub dataset"),
    Flag("out", "out", help="output directory"),
    Flag("no_progress", "no-progress", bool, "no progress bars"),
    Flag("output_format", "output-format", choices=("auto", "jsonl", "parquet", "hf"),
         help="coreset file: auto (Parquet for Parquet pools, else JSONL), jsonl, parquet, or hf "
              "(a datasets save_to_disk folder)"),
    Flag("layout", "layout", choices=("trim", "less"),
         help="less: k = int(fraction * |pool|) as LESS rounds it; select also writes "
              "OUT/<task>/sorted.csv and OUT/<task>/top_p*.jsonl as LESS writes them (file name, "
              "index, score)"),
    Flag("dry_run", "dry-run", bool, "count examples and tokens, time a short forward, estimate "
         "the run; write nothing (needs no --out)"),
    Flag("warmup", "warmup", bool, "train a LoRA warmup adapter on a pool subset first; score "
         "with it merged"),
    Flag("warmup_out", "warmup-out", help="adapter directory (default: OUT/warmup_adapter)"),
    Flag("bank", "bank", repeat=True, metavar="FILE", help="bank file (repeatable)"),
    Flag("scores", "scores", help="scores.parquet written by 'score' or 'select'"),
)}
SOURCES = ("format", "split", "subset")
# Flags that exist on select but mean something else there are prefixed for the warmup.
WARMUP_PREFIXED = ("fraction", "seed", "lr", "epochs", "warmup_ratio", "effective_batch",
                    "micro_batch", "weight_decay", "max_length", "dtype", "gradient_checkpointing")


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


__all__ = ["Flag", "IO", "SOURCES", "WARMUP_PREFIXED", "setting_flags", "add_settings",
           "read_config_file", "build_settings"]
