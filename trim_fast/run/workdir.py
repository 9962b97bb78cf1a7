"""A resumable run's work directory, ``OUT/work``: ``manifest.json`` (what the run is: model and
its weights digest, tokenizer, banks, pool sources, settings), ``tokens/chunk-NNNNNN.safetensors``
(token ids and counted masks of a chunk of pool examples) and ``scores/chunk-NNNNNN.safetensors``
(per-task scores of a chunk). Every file is written to a temp name and renamed, so a run killed
at any point (``kill -9`` included) leaves only whole files.

Reuse is by content, not by file dates: each chunk file's header carries the digest of the
records it was computed from (and a score shard the digest of the whole pool when the pool IDF
enters its scores), so a record edited in place between a killed run and its resume, even with
the same size and modification time, makes exactly the chunks it touches be redone. A run
directory made by a different run (another model, tokenizer, bank, pool source or setting) is
refused, naming what differs. A model is known by its weights digest and a pool file by its
resolved path, so two spellings of one model directory or one file are one run
(:func:`run_identity`).
"""
from __future__ import annotations

import json
import logging
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from trim_fast.digests import file_checksum
from trim_fast.errors import RunDirectoryError
from trim_fast.run.distributed import DistContext
from trim_fast.run.files import atomic_open, save_safetensors_atomic

CACHE_VERSION = 3  # 2: chunk headers carry content digests; 3: and a checksum of the data
logger = logging.getLogger("trim_fast")


def _canonical(obj) -> dict:
    return json.loads(json.dumps(obj, sort_keys=True))


def run_identity(manifest: dict) -> dict:
    """What makes two runs one run: the manifest with the model reduced to its weights digest
    (its name is only how it was spelled: ``./models/m``, ``models/m/`` and the absolute path are
    one model) and the pool's local paths resolved (``./pool.jsonl`` and ``pool.jsonl`` are one
    file). Hashing this, not the manifest as given, makes score shards independent of spellings."""
    m = _with_resolved_paths(_canonical(manifest))
    model = m.get("model")
    if isinstance(model, dict) and model.get("digest"):
        m["model"] = {"digest": model["digest"]}
    return m


_LOCAL_KINDS = ("jsonl", "json", "parquet", "disk")


def _with_resolved_paths(manifest: dict) -> dict:
    """Local pool paths made absolute (against this process's working directory), so that a
    manifest means the same files whatever directory a later run starts in."""
    pool = manifest.get("pool")
    if not isinstance(pool, list):
        return manifest
    resolved = []
    for d in pool:
        if isinstance(d, dict):
            d = dict(d)
            if d.get("kind") in _LOCAL_KINDS and isinstance(d.get("path"), str):
                d["path"] = os.path.realpath(os.path.expanduser(d["path"]))
            if isinstance(d.get("glob"), str):
                d["glob"] = os.path.normpath(os.path.abspath(os.path.expanduser(d["glob"])))
        resolved.append(d)
    return dict(manifest, pool=resolved)


def _difference(key: str, there, here) -> str:
    """One line on what differs under ``key``: the directory's value, then this run's."""
    if key == "model" and isinstance(there, dict) and isinstance(here, dict):
        return (f"{there.get('name')!r} with weights digest {there.get('digest')} there, "
                f"{here.get('name')!r} with weights digest {here.get('digest')} in this run")

    def short(v) -> str:
        text = json.dumps(v, sort_keys=True)
        return text if len(text) <= 160 else text[:157] + "..."

    return f"{short(there)} there, {short(here)} in this run"


def _only_max_tokens(old: dict, new: dict) -> bool:
    a, b = dict(old.get("settings") or {}), dict(new.get("settings") or {})
    return a.pop("max_tokens", None) != b.pop("max_tokens", None) and a == b


class WorkDir:
    """``OUT/work`` of one run (see the module docstring)."""

    def __init__(self, out_dir: str):
        self.root = os.path.join(out_dir, "work")
        self.tokens = os.path.join(self.root, "tokens")
        self.scores = os.path.join(self.root, "scores")
        self.manifest = os.path.join(self.root, "manifest.json")

    def token_path(self, c: int) -> str:
        return os.path.join(self.tokens, f"chunk-{c:06d}.safetensors")

    def score_path(self, c: int) -> str:
        return os.path.join(self.scores, f"chunk-{c:06d}.safetensors")

    def claim(self, manifest: dict, ctx: DistContext) -> None:
        """Create the layout and write ``manifest``, or check that an existing one is this run's
        (on rank 0; a refusal there is raised on every rank). Call it once the inputs are
        validated, so a run that failed on bad input never blocks the directory."""
        ctx.on_main(lambda: self._claim_main(manifest))
        os.makedirs(self.tokens, exist_ok=True)  # other nodes without a shared filesystem
        os.makedirs(self.scores, exist_ok=True)

    def _claim_main(self, manifest: dict) -> None:
        os.makedirs(self.tokens, exist_ok=True)
        os.makedirs(self.scores, exist_ok=True)
        manifest = _with_resolved_paths(_canonical(manifest))
        if os.path.exists(self.manifest):
            try:
                with open(self.manifest, encoding="utf-8") as f:
                    old = json.load(f)
            except (OSError, ValueError) as exc:
                raise RunDirectoryError(f"{self.manifest}: unreadable run manifest ({exc}); delete "
                                   "that directory or use a new --out") from None
            if not isinstance(old, dict):
                raise RunDirectoryError(f"{self.manifest}: not a run manifest; delete that directory "
                                   "or use a new --out")
            mine, theirs = run_identity(manifest), run_identity(old)
            if mine != theirs:
                changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                details = "; ".join(f"different {k}: {_difference(k, old.get(k), manifest.get(k))}"
                                    for k in changed)
                if changed == ["settings"] and _only_max_tokens(old, manifest):
                    details += (" (max_tokens sets how examples are batched, which changes the "
                                "scores in their last bits: resume with the old --max-tokens)")
                raise RunDirectoryError(f"{self.root} holds another run ({details}); refusing to mix "
                                   "results. Use a new --out, or delete that directory")
            return
        with atomic_open(self.manifest) as f:
            json.dump(manifest, f, indent=2, sort_keys=True)

    @staticmethod
    def load(path: str, header: dict) -> dict[str, torch.Tensor] | None:
        """The tensors of a chunk file whose header is ``header``; ``None`` when absent, written
        for other content or settings, or unreadable (a file cut short is redone, never trusted)."""
        if not os.path.exists(path):
            return None
        try:
            with safe_open(path, framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("trim_fast", "null"))
                stored_sum = (f.metadata() or {}).get("trim_fast_sum")
            if meta != _canonical(dict(header, v=CACHE_VERSION)):
                return None
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError):
            return None
        if stored_sum != _checksum(tensors):  # bytes changed in place (same size): redo it
            logger.warning("%s: its data does not match its checksum (corrupted); redoing it", path)
            return None
        return tensors

    @staticmethod
    def save(path: str, tensors: dict[str, torch.Tensor], header: dict) -> None:
        save_safetensors_atomic(tensors, path, {"trim_fast": json.dumps(dict(header, v=CACHE_VERSION),
                                                                        sort_keys=True),
                                                "trim_fast_sum": _checksum(tensors)})


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    """blake2b of every tensor's name, dtype, shape and bytes: a chunk file whose data changed
    at the same size (a bad disk, a stray write) is not trusted."""
    def parts():
        for name in sorted(tensors):
            t = tensors[name].detach().cpu().contiguous()
            yield f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode()
            yield t.reshape(-1).view(torch.uint8).numpy().tobytes()

    return file_checksum(parts())


__all__ = ["WorkDir", "CACHE_VERSION", "run_identity"]
