"""Every setting of a selection run and its default, in one place. The API takes these
dataclasses, the CLI generates its flags (and their help) from their fields, and a ``--config``
file sets any of them; nothing else states a default."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from trim_fast.types import FALLBACKS, SCOPES

METHODS = ("matched", "paper")
CENTERS = ("pool", "none")
# What each method sets among the knobs left at None (docs/SPEC.md section 7). "paper" is TRIM as
# sections 1-4 define it; "matched" scores only the tokens that have a fingerprint, on hidden
# states centred by the pool's mean state, and is the default (bench/QUALITY.md has the study).
METHOD_DEFAULTS = {
    "paper": {"fallback": "nearest", "idf": "pool", "w_coverage": 0.05, "center": "none"},
    "matched": {"fallback": "skip", "idf": "none", "w_coverage": 0.0, "center": "pool"},
}
SALIENCY_BACKENDS = ("auto", "triton", "cpu", "torch", "eager")
IDF_MODES = ("pool", "none")
COMBINE_MODES = ("quantile", "max", "mean")
DTYPES = ("auto", "fp32", "fp16", "bf16")


# The stages of a run, named as the CLI names its commands (Selector: fingerprint, score, choose).
STAGES = ("fingerprint", "score", "pick")


def setting(default: Any, help: str, *, choices: tuple | None = None, flag: str | None = None,
            metavar: str | None = None, stages: tuple[str, ...] = (),
            keyed: tuple[str, ...] = ()) -> Any:
    """A dataclass field with the help text (and choices) the CLI shows for it. ``stages``: the
    stages that read it (their commands take its flag); ``keyed``: those among them whose output
    records it and is refused when it differs (a bank's header, the score shards' identity)."""
    unknown = set(stages) - set(STAGES) or set(keyed) - set(stages)
    if unknown:
        raise ValueError(f"setting {help[:40]!r}: stages {sorted(unknown)} are not among its "
                         f"stages or {STAGES}")
    meta = {"help": help, "choices": choices, "flag": flag, "metavar": metavar,
            "stages": tuple(stages), "keyed": tuple(keyed)}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _check_choices(obj) -> None:
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        value = getattr(obj, f.name)
        if choices and value is not None and value not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(map(str, choices))}; got {value!r}")


@dataclass
class SelectionConfig:
    """The method's knobs (docs/SPEC.md sections 1-4) and how the work is batched."""

    method: str = setting("matched", "scoring method: 'matched' (the default: tokens with a "
                          "fingerprint only, centred states) or 'paper' (TRIM exactly as "
                          "docs/SPEC.md sections 1-4 define it); it sets the knobs left unset",
                          choices=METHODS,
                          stages=("fingerprint", "score"), keyed=("fingerprint", "score"))
    layers: int = setting(6, "last L attention layers whose saliency weights the fingerprints",
                          stages=("fingerprint",), keyed=("fingerprint",))
    w_row: float = setting(0.5, "weight of row saliency Q (how sharply a token attends)",
                           stages=("fingerprint",), keyed=("fingerprint",))
    w_col: float = setting(0.5, "weight of column saliency K (how much attention a token gets)",
                           stages=("fingerprint",), keyed=("fingerprint",))
    scope: str = setting("all", "whose message content counts", choices=SCOPES,
                         stages=("fingerprint", "score"), keyed=("fingerprint", "score"))
    saliency: str = setting("auto", "attention-saliency kernel; 'eager' materialises attention "
                            "with output_attentions (slow, for checks)", choices=SALIENCY_BACKENDS,
                            stages=("fingerprint",))
    fallback: str | None = setting(None, "score of a token without a fingerprint (the method's: "
                                   "paper nearest, matched skip)", choices=FALLBACKS,
                                   stages=("score",), keyed=("score",))
    fallback_penalty: float = setting(0.9, "lambda of the nearest fallback: (1 - lambda) * max cos",
                                      stages=("score",), keyed=("score",))
    idf: str | None = setting(None, "token weights: idf over the pool, or none (the method's: "
                              "paper pool, matched none)", choices=IDF_MODES,
                              stages=("score",), keyed=("score",))
    w_mean: float = setting(0.5, "weight of the idf-weighted mean token score",
                            stages=("score",), keyed=("score",))
    w_max: float = setting(0.5, "weight of the best token score",
                           stages=("score",), keyed=("score",))
    w_coverage: float | None = setting(None, "weight of the share of scored tokens that have a "
                                       "fingerprint (the method's: paper 0.05, matched 0)",
                                       stages=("score",), keyed=("score",))
    center: str | None = setting(None, "subtract the pool's mean state from every hidden state "
                                 "before comparing (the method's: paper none, matched pool)",
                                 choices=CENTERS,
                                 stages=("fingerprint", "score"), keyed=("fingerprint", "score"))
    center_sample: int = setting(128, "pool examples (a seeded sample) whose counted tokens give "
                                 "the mean state", stages=("fingerprint",), keyed=("fingerprint",))
    fraction: float = setting(0.05, "keep round(fraction * |pool|) examples", stages=("pick",))
    k: int | None = setting(None, "keep exactly k examples (instead of --fraction)",
                            stages=("pick",))
    combine: str = setting("quantile", "how the scores of several target tasks combine: "
                           "quantile (each task's scores as quantiles over the pool, then the "
                           "max: every task gets its share), max or mean of the raw scores "
                           "(max: LESS's)", choices=COMBINE_MODES, stages=("score", "pick"))
    target_sample: int = setting(100, "without targets: how many pool examples (seeded) become "
                                 "the targets (in-domain mode)", stages=("fingerprint",))
    max_length: int = setting(2048, "longer examples are truncated (counted and reported)",
                              stages=("fingerprint", "score"), keyed=("fingerprint", "score"))
    max_tokens: int = setting(8192, "token budget of one forward batch (padded B x N)",
                              stages=("fingerprint", "score"), keyed=("score",))
    chunk_size: int = setting(4096, "pool examples per resumable shard and per unit of work "
                              "across ranks", stages=("score",), keyed=("score",))
    seed: int = setting(0, "seed of every sampled subset", stages=("fingerprint", "score"))
    shared_prefix: bool = setting(True, "forward the token prefix all examples of a chunk share "
                                  "once and only the rest against its keys/values (exact; "
                                  "causal models without a sliding window)",
                                  stages=("fingerprint", "score"), keyed=("score",))
    cut_tails: bool = setting(True, "stop each example's forward at its last counted token "
                              "(exact under causal attention)",
                              stages=("fingerprint", "score"), keyed=("score",))
    hidden_layer: int | None = setting(None, "early exit: score (and fingerprint) the output of "
                                       "block L and stop the pool's forward there (default: the "
                                       "last layer, after the final norm)", metavar="L",
                                       stages=("fingerprint", "score"),
                                       keyed=("fingerprint", "score"))

    def __post_init__(self):
        _check_choices(self)
        if self.center_sample < 1:
            raise ValueError(f"center_sample must be >= 1, got {self.center_sample}")
        if self.hidden_layer is not None and self.hidden_layer < 1:
            raise ValueError(f"hidden_layer must be >= 1 (or None: the last), got {self.hidden_layer}")
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be >= 1 (an empty selection is not a selection), got {self.k}")
        if self.k is None and not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if not 0.0 <= self.fallback_penalty <= 1.0:
            raise ValueError(f"fallback_penalty (lambda) must be in [0, 1], got {self.fallback_penalty}")
        weights = {"w_row": self.w_row, "w_col": self.w_col, "w_mean": self.w_mean,
                   "w_max": self.w_max, "w_coverage": self.w_coverage}
        bad = {k: v for k, v in weights.items() if v is not None and not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"weights must be finite and >= 0, got {bad}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.target_sample < 1:
            raise ValueError(f"target_sample must be >= 1, got {self.target_sample}")
        if self.max_length < 2 or self.max_tokens < self.max_length:
            raise ValueError(f"need 2 <= max_length <= max_tokens; got max_length={self.max_length}, "
                             f"max_tokens={self.max_tokens}")

    def replace(self, **changes) -> "SelectionConfig":
        return dataclasses.replace(self, **changes)

    def resolved(self) -> "SelectionConfig":
        """The knobs left at None set to the method's values (what a run uses)."""
        return self.replace(**{k: v for k, v in METHOD_DEFAULTS[self.method].items()
                               if getattr(self, k) is None})

    def bank_settings(self) -> dict:
        """What a fingerprint bank depends on: stored in its header, checked when it is used."""
        cfg = self.resolved()
        return {k: getattr(cfg, k) for k in BANK_FIELDS}

    def scoring_settings(self) -> dict:
        """What the pool's score shards depend on (selection knobs apply later, to the table)."""
        cfg = self.resolved()
        return {k: getattr(cfg, k) for k in SCORING_FIELDS}


def stage_fields(stage: str, *, keyed: bool = False, cls=None) -> tuple[str, ...]:
    """The settings (of ``cls``, default :class:`SelectionConfig`) that ``stage`` reads, or with
    ``keyed`` those its output records; from each field's ``stages``/``keyed`` metadata."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return tuple(f.name for f in dataclasses.fields(cls or SelectionConfig)
                 if stage in f.metadata.get("keyed" if keyed else "stages", ()))


BANK_FIELDS = stage_fields("fingerprint", keyed=True)
SCORING_FIELDS = stage_fields("score", keyed=True)
# What a bank and the pool's scoring must share (both record it): the bank was built to be
# compared with hidden states of that method and centring, and token counts of that scope and length.
SHARED_WITH_POOL = tuple(k for k in BANK_FIELDS if k in SCORING_FIELDS)


@dataclass
class ModelConfig:
    """Which model scores, and where."""

    model: str | None = setting(None, "HF model directory, .gguf file or hub id (default: the "
                                "embedded SmolLM2-135M-Instruct)")
    adapter: str | None = setting(None, "peft LoRA adapter directory, merged before scoring")
    device: str | None = setting(None, "cpu, cuda, cuda:1 ... (default: cuda if available)")
    dtype: str = setting("auto", "auto: bf16 on GPU, fp32 on CPU", choices=DTYPES)

    def __post_init__(self):
        _check_choices(self)


SPEC_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class WarmupConfig:
    """The LoRA warmup (docs/SPEC.md section 5); the defaults are the SPEC's (after LESS)."""

    fraction: float = setting(0.05, "share of the pool trained on (seeded random subset)")
    seed: int = setting(0, "seed of the subset, the LoRA init, dropout and example order")
    r: int = setting(128, "LoRA rank", flag="lora-r")
    alpha: int = setting(512, "LoRA alpha (scaling alpha / r)", flag="lora-alpha")
    dropout: float = setting(0.1, "LoRA dropout", flag="lora-dropout")
    target_modules: tuple[str, ...] = setting(SPEC_TARGET_MODULES, "module names LoRA goes on "
                                              "(comma-separated)", flag="lora-targets")
    lr: float = setting(2e-5, "peak learning rate (AdamW)")
    epochs: int = setting(4, "passes over the subset")
    warmup_ratio: float = setting(0.03, "share of the steps with linear lr warmup (then cosine), "
                                  "rounded up as transformers.Trainer does")
    effective_batch: int = setting(32, "examples per optimizer step (gradient accumulation)",
                                   flag="batch-size")
    micro_batch: int = setting(4, "examples per forward/backward")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    max_length: int = setting(2048, "longer examples are truncated")
    dtype: str = setting("auto", "auto: bf16 on GPU (fp16 where bf16 is unsupported), fp32 on CPU",
                         choices=DTYPES)
    gradient_checkpointing: bool = setting(False, "recompute activations in backward: less "
                                           "memory, slower")

    def __post_init__(self):
        if isinstance(self.target_modules, str):
            self.target_modules = tuple(s.strip() for s in self.target_modules.split(",") if s.strip())
        self.target_modules = tuple(self.target_modules)
        _check_choices(self)
        checks = {"fraction": 0.0 < self.fraction <= 1.0, "r": self.r >= 1,
                  "epochs": self.epochs >= 1, "effective_batch": self.effective_batch >= 1,
                  "micro_batch": self.micro_batch >= 1, "max_length": self.max_length >= 2,
                  "lr": self.lr > 0, "alpha": self.alpha > 0, "dropout": 0.0 <= self.dropout < 1.0,
                  "warmup_ratio": 0.0 <= self.warmup_ratio < 1.0,
                  "weight_decay": self.weight_decay >= 0,
                  "target_modules": len(self.target_modules) > 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid warmup setting(s): "
                             + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))

    @property
    def accumulation_steps(self) -> int:
        return math.ceil(self.effective_batch / self.micro_batch)


def as_dict(cfg) -> dict:
    """A config as plain JSON values (tuples become lists), as it reads back from a file."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


__all__ = ["SelectionConfig", "ModelConfig", "WarmupConfig", "METHODS", "METHOD_DEFAULTS", "SCOPES",
           "SALIENCY_BACKENDS", "BANK_FIELDS", "SCORING_FIELDS", "SHARED_WITH_POOL", "STAGES",
           "as_dict", "setting", "stage_fields"]
