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
refused, naming what differs.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from trim_fast.run.distributed import DistContext
from trim_fast.run.files import atomic_open, save_safetensors_atomic

CACHE_VERSION = 2  # 2: chunk headers carry content digests


def _canonical(obj) -> dict:
    return json.loads(json.dumps(obj, sort_keys=True))


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
        manifest = _canonical(manifest)
        if os.path.exists(self.manifest):
            try:
                with open(self.manifest, encoding="utf-8") as f:
                    old = json.load(f)
            except (OSError, ValueError) as exc:
                raise RuntimeError(f"{self.manifest}: unreadable run manifest ({exc}); delete "
                                   "that directory or use a new --out") from None
            if old != manifest:
                changed = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
                raise RuntimeError(
                    f"{self.root} holds a run with a different {', '.join(changed)}; refusing to "
                    "mix results. Use a new --out, or delete that directory")
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
            if meta != _canonical(dict(header, v=CACHE_VERSION)):
                return None
            return load_file(path)
        except (SafetensorError, OSError, ValueError):
            return None

    @staticmethod
    def save(path: str, tensors: dict[str, torch.Tensor], header: dict) -> None:
        save_safetensors_atomic(tensors, path, {"trim_fast": json.dumps(dict(header, v=CACHE_VERSION),
                                                                        sort_keys=True)})


__all__ = ["WorkDir", "CACHE_VERSION"]
