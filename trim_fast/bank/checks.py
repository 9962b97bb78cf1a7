"""Banks read from files and checked against a run: one place for both, used by the library
(:class:`trim_fast.Selector`) and the command line (``score``) alike."""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from trim_fast.bank.fingerprints import FingerprintBank, settings_conflict
from trim_fast.config import SHARED_WITH_POOL, SelectionConfig
from trim_fast.data import tokenizer_digest
from trim_fast.errors import BankMismatchError, DataError


def load_bank(path: str | os.PathLike) -> FingerprintBank:
    """A bank file; a missing, cut or foreign file is a :class:`DataError` naming it."""
    try:
        return FingerprintBank.load(os.fspath(path))
    except FileNotFoundError as exc:
        raise DataError(str(exc)) from exc
    except (ValueError, TypeError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(str(exc)) from exc


def collect_banks(banks: Any) -> dict[str, FingerprintBank]:
    """``{task: bank}`` from a bank, a bank file, a list of them or a mapping. A bank is named by
    its own ``task``, else by its file's name (``math.safetensors``: ``math``), else by its
    position; two banks of one name are refused, and so are banks whose settings differ."""
    if isinstance(banks, (FingerprintBank, str, os.PathLike)):
        banks = [banks]
    if isinstance(banks, Mapping):
        out = {name: load_bank(b) if isinstance(b, (str, os.PathLike)) else b
               for name, b in banks.items()}
    else:
        out = {}
        for b in banks:
            is_file = isinstance(b, (str, os.PathLike))
            bank = load_bank(b) if is_file else b
            fallback = os.path.basename(os.fspath(b)).split(".")[0] if is_file else f"task{len(out)}"
            name = getattr(bank, "meta", {}).get("task") or fallback
            if name in out:
                raise BankMismatchError(f"{os.fspath(b)}: a second bank for task {name!r}" if is_file
                                        else f"two banks are named {name!r}; pass a mapping "
                                             "{task: bank}")
            out[name] = bank
    for name, bank in out.items():
        if not isinstance(bank, FingerprintBank):
            raise TypeError(f"bank {name!r}: expected a FingerprintBank, got {type(bank).__name__}")
    if not out:
        raise BankMismatchError("no fingerprint bank given")
    conflict = settings_conflict(out)
    if conflict:
        raise BankMismatchError(conflict)
    return out


def check_banks(banks: Mapping[str, FingerprintBank], cfg: SelectionConfig, tokenizer,
                info: dict | None = None) -> None:
    """Refuse banks that do not fit a run with settings ``cfg`` and ``tokenizer`` (and, given
    ``info``, the model's weights digest): built with another model's weights or tokenizer, with
    settings that differ among them or from ``cfg``, or holding a token id outside the
    vocabulary."""
    if not banks:
        raise BankMismatchError("no fingerprint bank given")
    conflict = settings_conflict(banks)
    if conflict:
        raise BankMismatchError(conflict)
    first = next(iter(banks.values())).meta["settings"]
    for key in SHARED_WITH_POOL:
        if first.get(key) != getattr(cfg, key):
            raise BankMismatchError(f"the banks were built with {key}={first.get(key)!r}, this run "
                                    f"scores with {key}={getattr(cfg, key)!r}; use the same {key}")
    centers = [b.center for b in banks.values()]
    shared = centers[0]
    same = all(torch.equal(c, shared) if c is not None and shared is not None else c is shared
               for c in centers)
    if not same or (cfg.center == "pool") != (shared is not None):
        raise BankMismatchError("the banks do not share one mean state (center): build the banks "
                                "of one run together, from one pool")
    vocab = len(tokenizer)
    digest = tokenizer_digest(tokenizer)
    for name, bank in banks.items():
        if bank.meta.get("tokenizer_digest") != digest:
            raise BankMismatchError(f"bank {name!r} was built with another tokenizer (digest "
                                    f"{bank.meta.get('tokenizer_digest')!r}, this run's is "
                                    f"{digest!r}); rebuild it with this model's tokenizer")
        top = int(bank.classes.max())
        if top >= vocab:
            raise BankMismatchError(f"bank {name!r} holds token id {top}, outside the tokenizer's "
                                    f"vocabulary of {vocab}")
        built = bank.meta.get("model") or {}
        if info is not None and built.get("digest") != info["digest"]:
            raise BankMismatchError(
                f"bank {name!r} was built with model {built.get('name')!r} (weights digest "
                f"{built.get('digest')!r}); this run's model {info['name']!r} has weights digest "
                f"{info['digest']!r}. Its fingerprints do not fit these hidden states: rebuild the "
                "bank with this model")


__all__ = ["load_bank", "collect_banks", "check_banks"]
