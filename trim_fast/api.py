"""The library: one object that fingerprints targets, scores a pool and selects from it.

    from trim_fast import Selector

    selector = Selector()                      # the embedded SmolLM2, or Selector(model, tokenizer)
    result = selector.select(pool, targets)    # lists of records, datasets, or file paths
    result.indices, result.records()           # the top 5%, best first

``Selector(model, tokenizer, config)`` takes a model name or path (default: the embedded one) or
an object a frontend already holds: a transformers base model, a ``*ForCausalLM``, a peft
``PeftModel`` (its adapter merged for the forward passes, the weights restored afterwards) or a
DDP/accelerate-wrapped model, in eval mode. Pools and targets are anything
:func:`trim_fast.data.open_records` reads: lists of records in any supported shape, a
``datasets.Dataset``, file paths, or pre-tokenized rows. Nothing is written to disk unless a
``work_dir`` is given, which makes a large run resumable. Library calls log through the
``trim_fast`` logger and show no progress bar unless ``progress=True``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from trim_fast.bank import FingerprintBank
from trim_fast.bank.checks import check_banks, collect_banks, load_bank
from trim_fast.bank.build import fingerprint_tokens, mean_state, target_family
from trim_fast.config import SelectionConfig
from trim_fast.digests import settings_identity
from trim_fast.errors import ConfigError, DataError
from trim_fast.data import Records, open_records, open_tasks, tokenizer_digest
from trim_fast.models.digest import weights_digest
from trim_fast.models.prepare import forward_model, unwrap
from trim_fast.run.distributed import DistContext
from trim_fast.run.outputs import records_table
from trim_fast.run.workdir import WorkDir, run_identity
from trim_fast.capture.forward import check_hidden_layer, loop_for
from trim_fast.scoring.engine import (ForwardCache, PoolScores, chunk_digest, iter_chunks,
                                      score_pool, tokenize_chunk)
from trim_fast.selection import Selection, choose, num_selected

logger = logging.getLogger("trim_fast")

EMBED_POOLING = ("mean", "last")  # Selector.embed: over a record's counted tokens



@dataclass
class SelectionResult:
    """What :meth:`Selector.select` returns: ``indices`` (pool positions, best first), the
    pool's ``scores`` (index-aligned, per task, with their parts), the ``combined`` score they
    were chosen by, ``k``, the ``unscored`` examples (no scored token: never selected) and the
    ``banks`` the targets gave."""

    indices: list[int]
    scores: PoolScores
    combined: torch.Tensor
    k: int
    unscored: list[int]
    banks: dict[str, FingerprintBank]
    pool: Records = field(repr=False)

    def records(self) -> list[dict]:
        """The selected records exactly as given, best first."""
        return [ex.raw for ex in self.pool.take(self.indices)]

    def to_dataset(self, score_column: str = "trim_score"):
        """The selection as a ``datasets.Dataset``, best first, with its score in
        ``score_column`` (replacing one of that name): ``ds.select(indices)`` when the pool was
        one ``Dataset``."""
        import datasets

        source = getattr(self.pool, "dataset", None)
        if isinstance(source, datasets.Dataset):
            ds = source.select(self.indices)
        else:  # one schema over every record's fields (Dataset.from_list takes the first's)
            ds = datasets.Dataset(records_table(self.pool.take(self.indices)))
        if score_column in ds.column_names:  # a selection of a selection: the new score
            ds = ds.remove_columns([score_column])
        return ds.add_column(score_column, [float(self.combined[i]) for i in self.indices])


def require_center_pool(cfg: SelectionConfig, pool: Any) -> None:
    """A method that centres (the default) takes its mean state from the pool the banks are for:
    refuse fingerprinting without one (needs no model, so the CLI refuses before loading it)."""
    if pool is None and cfg.resolved().center == "pool":
        raise ConfigError(f"method {cfg.method!r} centres hidden states by the mean state of a "
                         "sample of the pool the banks are for: pass the pool (fingerprint(targets, "
                         "pool=...); on the command line --pool), or set center='none' "
                         "(--center none)")


def check_settings(cfg: SelectionConfig) -> SelectionConfig:
    """Settings that would fail, or select by nothing, only once the model has run: refused
    before it loads (the CLI calls this right after parsing the flags)."""
    if isinstance(cfg.k, bool) or not isinstance(cfg.k, (int, type(None))):
        raise ConfigError(f"k must be a whole number, got {cfg.k!r}")
    if isinstance(cfg.layers, bool) or not isinstance(cfg.layers, int):
        raise ConfigError(f"layers must be a whole number, got {cfg.layers!r}")
    if cfg.w_row == 0 and cfg.w_col == 0:
        raise ConfigError("w_row and w_col are both 0: every token's saliency would be 0 and no "
                          "fingerprint would have weight; give one of them a positive weight")
    if cfg.w_mean == 0 and cfg.w_max == 0 and not cfg.w_coverage:
        raise ConfigError("w_mean, w_max and w_coverage are all 0: every example would score 0 "
                          "and the selection would be by pool position; give one a positive weight")
    return cfg


def _clip_layers(cfg: SelectionConfig, model) -> SelectionConfig:
    """``layers`` above the model's layer count: the model's count, with a warning, and that is
    the value recorded (banks, summary), not the one asked for."""
    n = getattr(getattr(unwrap(model), "config", None), "num_hidden_layers", None)
    if isinstance(n, int) and n > 0 and cfg.layers > n:
        asked = cfg.layers != SelectionConfig.layers  # the default on a small model is no news
        (logger.warning if asked else logger.info)(
            "layers=%d but the model has %d layers: using all %d", cfg.layers, n, n)
        return cfg.replace(layers=n)
    return cfg


class _OneThread:
    """A Selector's calls come from one thread at a time (it keeps per-call state: the pinned
    weights digest): a second thread is refused with a clear message, nested calls of the
    thread inside are fine."""

    def __init__(self):
        self._lock = threading.Lock()
        self._owner, self._depth = None, 0

    @contextlib.contextmanager
    def __call__(self):
        me = threading.get_ident()
        with self._lock:
            if self._owner not in (None, me):
                raise ConfigError("this Selector is already running a call in another thread; "
                                  "use one Selector per thread (they can share the model)")
            self._owner, self._depth = me, self._depth + 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None


def _one_thread(method):
    """Run a public Selector call under its :class:`_OneThread` guard."""
    import functools

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if "_calls" not in vars(self):  # a Selector made without __init__ (tests, subclasses)
            self._calls = _OneThread()
        with self._calls():
            return method(self, *args, **kwargs)

    return guarded


def _dtype_and_device(base) -> tuple[str, str]:
    """The forward's dtype (``"float32"``) and device type (``"cpu"``)."""
    param = next(base.parameters())
    return str(param.dtype).replace("torch.", ""), param.device.type


def _forward_identity(base, info: dict) -> str:
    """What a cached forward depends on: the weights (digest, bf16-rounded), their dtype and
    the device type (the same weights in fp32 and bf16 give other hidden states)."""
    return " ".join((info["digest"], *_dtype_and_device(base)))


class Selector:
    """Fingerprint targets, score pools, select: see the module docstring.

    ``model``: ``None`` (the embedded SmolLM2-135M-Instruct), a name/path/hub id, or a loaded
    model object (then ``tokenizer`` is required). ``config``: a :class:`SelectionConfig`
    (defaults: docs/SPEC.md). ``adapter``, ``device`` and ``dtype`` apply when the model is
    loaded here. ``progress``: tqdm bars for long loops.
    """

    def __init__(self, model: Any = None, tokenizer: Any = None,
                 config: SelectionConfig | None = None, *, adapter: str | None = None,
                 device: str | None = None, dtype: str = "auto", progress: bool = False,
                 distributed: bool = True):
        self.config = check_settings((config or SelectionConfig()).resolved())
        self.progress = progress
        self.distributed = distributed
        self._pin, self._pinned_info = False, None  # see _one_weights_digest
        if isinstance(model, torch.nn.Module):
            if tokenizer is None:
                raise TypeError("Selector: a loaded model needs its tokenizer too: "
                                "Selector(model, tokenizer)")
            if adapter is not None or device is not None or dtype != "auto":
                raise ConfigError("Selector: adapter, device and dtype apply to a model loaded "
                                 "here; merge, move or cast a loaded model yourself")
            self.model = model
            inner = unwrap(model)  # DDP / accelerate: the name of the model inside
            self.model_name = getattr(getattr(inner, "config", None), "_name_or_path", "") or \
                type(inner).__name__
        elif model is None or isinstance(model, (str, os.PathLike)):
            from trim_fast.models.loading import load_model, load_tokenizer, model_id

            name = None if model is None else os.fspath(model)
            tokenizer = tokenizer if tokenizer is not None else load_tokenizer(name, progress=progress)
            self.model = load_model(name, adapter=adapter, device=device, dtype=dtype,
                                    progress=progress)
            self.model_name = model_id(name)
        else:
            raise TypeError(f"Selector: model must be None, a name or path, or a loaded torch "
                            f"model; got {type(model).__name__}")
        from trim_fast.models.loading import check_vocab

        check_vocab(self.model, tokenizer)  # before any forward, not an IndexError inside one
        self.config = _clip_layers(self.config, self.model)
        if not getattr(tokenizer, "chat_template", None):
            logger.warning("the tokenizer of %s has no chat template: chat records are rendered "
                           "with trim_fast's plain one ('### User:' ... '### Assistant:'), not "
                           "the format the model was trained on", self.model_name)
        self._calls = _OneThread()
        self.tokenizer = tokenizer
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0)
                           if i is not None)

    # -- targets -> banks ---------------------------------------------------------------------
    @_one_thread
    def fingerprint(self, targets: Any, *, task: str | None = None, pool: Any = None,
                    forward_cache: ForwardCache | None = None) -> dict[str, FingerprintBank]:
        """One bank per task. ``targets``: one task's records (named ``task``, default
        ``"targets"``), or a mapping ``{task: records}``. ``pool``: the pool the banks are for;
        a method that centres (the default) takes the mean state of a seeded sample of it
        (``forward_cache``: reuse that sample's forward passes across calls)."""
        require_center_pool(self.config, pool)
        tasks = open_tasks(targets, task=task)
        ctx = self._dist()
        with forward_model(self.model) as base:
            info = self._model_info(base)
            if forward_cache is not None:
                forward_cache.bind(_forward_identity(base, info))

            def build():
                center = self._pool_center(base, pool, forward_cache) \
                    if self.config.center == "pool" else None
                return {name: self._fingerprint_task(base, name, recs, info, center)
                        for name, recs in tasks.items()}

            return ctx.on_main(build)

    def _pool_center(self, base, pool: Any, forward_cache: ForwardCache | None) -> torch.Tensor:
        """The mean state of the counted tokens of ``center_sample`` pool examples (seeded)."""
        cfg = self.config
        records = open_records(pool)
        size = records.count()
        picks = sorted(random.Random(cfg.seed).sample(range(size), min(cfg.center_sample, size)))
        chunk = tokenize_chunk(self.tokenizer, records.take(picks), cfg)
        if not bool(chunk.counted.any()):  # e.g. max_length shorter than the template's start
            raise DataError(f"none of the {len(picks)} pool example(s) sampled to centre the hidden "
                            f"states has a counted token under scope={cfg.scope!r} and max_length="
                            f"{cfg.max_length}; raise --max-length or choose another --scope")
        center = mean_state(base, chunk, cfg, pad_id=self.pad_id, forward_cache=forward_cache)
        logger.info("mean state of %d pool example(s) (seed %d) centres the hidden states",
                    len(picks), cfg.seed)
        return center

    def _fingerprint_task(self, base, name: str, records: Records, info: dict,
                          center: torch.Tensor | None) -> FingerprintBank:
        examples = list(records)
        if not examples:
            raise DataError(f"task {name!r}: no target examples")
        chunk = tokenize_chunk(self.tokenizer, examples, self.config)
        if not bool(chunk.counted.any()):
            sources = sorted({str(e.source) for e in examples})
            raise DataError(f"task {name!r} ({', '.join(sources[:3])}): none of its {len(examples)} "
                            f"target example(s) has a counted token under scope="
                            f"{self.config.scope!r}; give targets with that part, or another scope")
        meta = {"task": name, "model": info, "tokenizer_digest": tokenizer_digest(self.tokenizer),
                "family": target_family([e.meta.get("family") for e in examples]),
                "num_targets": len(examples), "targets_digest": chunk_digest(examples)}
        bank = fingerprint_tokens(base, chunk, self.config, pad_id=self.pad_id, meta=meta,
                                  center=center, progress=self.progress)
        logger.info("task %s: %d targets -> %d fingerprints", name, len(examples), len(bank))
        return bank

    # -- pool -> scores -----------------------------------------------------------------------
    @_one_thread
    def score(self, pool: Any, banks: Any, *, work_dir: str | None = None,
              forward_cache: ForwardCache | None = None) -> PoolScores:
        """Score every pool example against ``banks`` (a bank, a list of banks, ``{task: bank}``
        or bank file paths). ``work_dir``: persist token chunks and score shards there, so a
        killed run resumes where it stopped. ``forward_cache``: reuse the forward passes of an
        earlier call on the same pool (in memory)."""
        records = open_records(pool)
        banks = collect_banks(banks)
        ctx = self._dist()
        with forward_model(self.model) as base:
            info = self._model_info(base)
            if forward_cache is not None:
                forward_cache.bind(_forward_identity(base, info))
            self.check_banks(banks, info)
            dtype, device = _dtype_and_device(base)
            manifest = {"model": info, "tokenizer": tokenizer_digest(self.tokenizer),
                        "dtype": dtype, "device": device,
                        # the targets, by content: a bank's vectors also depend on the pool
                        # sample that centres them, which an in-place edit may change
                        "targets": {t: b.meta.get("targets_digest") or b.digest()
                                    for t, b in banks.items()},
                        "pool": records.describe(), "settings": self.config.scoring_settings(),
                        "bank_settings": next(iter(banks.values())).meta["settings"]}
            # score shards depend on the banks themselves (vectors and center)
            identity = dict(run_identity(manifest), banks={t: b.digest() for t, b in banks.items()})
            run_digest = settings_identity(identity)
            workdir = None
            if work_dir is not None:
                workdir = WorkDir(work_dir)
                workdir.claim(manifest, ctx)
            scores = score_pool(base, self.tokenizer, records, banks, self.config, pad_id=self.pad_id,
                                run_digest=run_digest, workdir=workdir, ctx=ctx,
                                progress=self.progress, forward_cache=forward_cache)
        if int((scores.truncated > 0).sum()):
            logger.info("%d pool example(s) longer than max_length %d were truncated",
                        int((scores.truncated > 0).sum()), self.config.max_length)
        return scores

    def check_banks(self, banks: Mapping[str, FingerprintBank], info: dict | None = None) -> None:
        """Refuse banks that do not fit this selector (:func:`trim_fast.bank.checks.check_banks`):
        another model's weights or tokenizer, settings that differ, a token id outside the
        vocabulary."""
        check_banks(banks, self.config, self.tokenizer, info)

    # -- pool + targets -> selection ------------------------------------------------------------
    @_one_thread
    def select(self, pool: Any, targets: Any = None, *, fraction: float | None = None,
               k: int | None = None, work_dir: str | None = None,
               forward_cache: ForwardCache | None = None) -> SelectionResult:
        """Fingerprint ``targets`` (a task's records or ``{task: records}``; ``None``: a seeded
        sample of ``config.target_sample`` pool examples, in-domain mode), score ``pool``, keep
        the top ``k`` (default ``round(config.fraction * |pool|)``)."""
        if isinstance(k, bool) or not isinstance(k, (int, type(None))):
            raise ConfigError(f"k must be a whole number, got {k!r}")
        if fraction is not None or k is not None:
            num_selected(1, fraction=fraction, k=k)  # bad k or fraction: refused before any forward
        records = open_records(pool)
        if targets is None:
            targets = {"in_domain": self.in_domain_targets(records)}
        with self._one_weights_digest():
            banks = self.fingerprint(targets, pool=records, forward_cache=forward_cache)
            scores = self.score(records, banks, work_dir=work_dir, forward_cache=forward_cache)
        sel = self.choose(scores, fraction=fraction, k=k)
        return SelectionResult(sel.indices, scores, sel.combined, sel.k, sel.unscored, banks, records)

    def choose(self, scores: PoolScores, *, fraction: float | None = None, k: int | None = None,
               rounding: str = "half_up") -> Selection:
        """The top ``k`` of scored examples (SPEC 4), with this config's combine rule."""
        cfg = self.config
        if fraction is None and k is None:
            fraction, k = cfg.fraction, cfg.k
        sel = choose(scores.score, combine=cfg.combine, fraction=fraction, k=k, rounding=rounding)
        if sel.unscored:
            logger.warning("%d pool example(s) had no scored token (score -inf, never selected)",
                           len(sel.unscored))
        return sel

    def in_domain_targets(self, pool: Any) -> Records:
        """In-domain mode: a seeded sample of ``config.target_sample`` pool examples, as the
        targets of one task."""
        records = open_records(pool)
        size = records.count()
        n = min(self.config.target_sample, size)
        picks = sorted(random.Random(self.config.seed).sample(range(size), n))
        logger.info("no targets: in-domain mode, %d of %d pool examples sampled with seed %d",
                    n, size, self.config.seed)
        return open_records(records.take(picks))

    @_one_thread
    def embed(self, records: Any, *, pooling: str = "mean", layer: int | None = None) -> torch.Tensor:
        """``[N, d]`` float32, one vector per record: its hidden states at ``layer`` (``None``:
        this config's ``hidden_layer``; ``-1``: the last, after the final norm; ``l``: the output
        of block ``l``) pooled over its counted tokens (all its tokens when none counts):
        ``"mean"`` averages them, ``"last"`` takes the last. The scorer's forward loop, with this
        config's batches and levers."""
        if pooling not in EMBED_POOLING:
            raise ConfigError(f"pooling {pooling!r}: expected one of {', '.join(EMBED_POOLING)}")
        cfg = self.config
        layer = cfg.hidden_layer if layer is None else layer
        vectors = []
        with forward_model(self.model) as base:
            loop = loop_for(base, cfg, pad_id=self.pad_id, layers=(layer,))
            key = check_hidden_layer(loop.base, layer)
            for _, _, examples in iter_chunks(open_records(records), cfg.chunk_size):
                chunk = tokenize_chunk(self.tokenizer, examples, cfg)
                pooled = [None] * len(chunk)
                for hb in loop.hidden_batches(chunk):
                    hidden = hb.states[key].float()
                    for row, i in enumerate(hb.index):
                        keep = hb.counted[row] if bool(hb.counted[row].any()) else hb.mask[row]
                        states = hidden[row][keep]
                        pooled[i] = (states.mean(0) if pooling == "mean" else states[-1]).cpu()
                vectors.extend(pooled)
        if not vectors:
            raise DataError("embed: no records")
        return torch.stack(vectors)

    def _model_info(self, base) -> dict:
        """The model's name and weights digest (a pass over the weights: taken at every public
        call, since a frontend may change the weights in between; once per :meth:`select`)."""
        if self._pinned_info is not None:
            return self._pinned_info
        info = {"name": self.model_name, "digest": weights_digest(base)}
        if self._pin:
            self._pinned_info = info
        return info

    @contextlib.contextmanager
    def _one_weights_digest(self):
        """Within one call that fingerprints and scores, the weights do not change."""
        self._pin, self._pinned_info = True, None
        try:
            yield
        finally:
            self._pin, self._pinned_info = False, None

    def _dist(self) -> DistContext:
        return DistContext.current() if self.distributed else DistContext()


__all__ = ["Selector", "SelectionResult", "load_bank"]
