"""SPEC section 5: a brief LoRA warmup on a seeded random subset of the pool, before scoring.

The adapter is trained with ``peft`` on the causal-LM model (the loss needs the LM head), with the
loss on response tokens only, and saved in peft's own format (``adapter_config.json`` +
``adapter_model.safetensors``) beside ``trim_warmup.json`` (subset ids, every training parameter,
the loss curve). ``--adapter DIR`` on fingerprint/score/select merges it into the weights
(:func:`trim_fast.models.loading.load_model`).

The loop is a plain torch loop: ``torch.optim.AdamW`` on the LoRA parameters and
``transformers.get_cosine_schedule_with_warmup`` (the scheduler ``Trainer`` itself uses, with its
``ceil(warmup_ratio * steps)`` warmup). ``Trainer`` would add ``accelerate``, output/checkpoint
directories and logging integrations that switch themselves on when installed, for ~8 optimizer
steps; the loop below is the part of it that matters here, and its loss is normalised by the
number of response tokens of the whole effective batch (what ``Trainer`` does with
``num_items_in_batch``), not averaged over micro-batches of unequal size.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from trim_fast.data import Example, Tokenized, tokenize_example

WARMUP_META = "trim_warmup.json"
SPEC_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class WarmupConfig:
    """Every knob of the warmup; the defaults are SPEC section 5's (after LESS)."""

    fraction: float = 0.05  # share of the pool trained on
    seed: int = 0  # subset, LoRA init, dropout and example order
    r: int = 128
    alpha: int = 512
    dropout: float = 0.1
    target_modules: tuple[str, ...] = SPEC_TARGET_MODULES
    lr: float = 2e-5
    epochs: int = 4
    warmup_ratio: float = 0.03  # of the optimizer steps, rounded up (as transformers.Trainer)
    effective_batch: int = 32  # examples per optimizer step (gradient accumulation)
    micro_batch: int = 4  # examples per forward/backward
    weight_decay: float = 0.0
    max_length: int = 2048  # longer examples are truncated
    dtype: str = "auto"  # auto: bf16 on GPU (fp16 where bf16 is unsupported), fp32 on CPU
    gradient_checkpointing: bool = False

    def __post_init__(self):
        self.target_modules = tuple(self.target_modules)
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"warmup fraction must be in (0, 1], got {self.fraction}")
        checks = {"r": self.r >= 1, "epochs": self.epochs >= 1, "effective_batch": self.effective_batch >= 1,
                  "micro_batch": self.micro_batch >= 1, "max_length": self.max_length >= 2,
                  "lr": self.lr > 0, "alpha": self.alpha > 0, "dropout": 0.0 <= self.dropout < 1.0,
                  "warmup_ratio": 0.0 <= self.warmup_ratio < 1.0, "weight_decay": self.weight_decay >= 0,
                  "target_modules": len(self.target_modules) > 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid warmup setting(s): " + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))

    @property
    def accumulation_steps(self) -> int:
        return math.ceil(self.effective_batch / self.micro_batch)


# Defaults that replace the SPEC's on CPU for flags not given (printed when used). Empty by
# measurement (bench/results/warmup.md): with the SPEC defaults the embedded SmolLM2 warms up on
# the 50-example demo subset in ~3 CPU-minutes, so CPU runs keep SPEC 5 as written.
CPU_DEFAULTS: dict = {}


@dataclass
class WarmupResult:
    adapter_dir: str
    subset_ids: list[str]
    losses: list[float]  # one per optimizer step: mean loss over the step's response tokens
    seconds: float
    subset_indices: list[int] = field(default_factory=list)


def warmup_subset(num_examples: int, fraction: float, seed: int) -> list[int]:
    """Sorted pool indices of the seeded random ``round(fraction * n)`` subset (half up, >= 1)."""
    from trim_fast.reference import num_selected

    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"warmup fraction must be in (0, 1], got {fraction}")
    if num_examples < 1:
        raise ValueError("warmup: the pool is empty, there is nothing to train on")
    k = num_selected(num_examples, fraction=fraction)
    return sorted(random.Random(seed).sample(range(num_examples), k))


def labels_from_tokenized(item: Tokenized) -> list[int]:
    """Token ids where the token is a response token, -100 (no loss) everywhere else."""
    return [tid if counted else -100 for tid, counted in zip(item.ids, item.counted)]


def build_training_batch(items: Sequence[Tokenized], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt, template,
    special and pad tokens). Labels align with the inputs; the loss shifts them by one."""
    if not items:
        raise ValueError("build_training_batch: no examples")
    n = max(len(t.ids) for t in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    labels = torch.full((len(items), n), -100, dtype=torch.long)
    for b, t in enumerate(items):
        ids[b, : len(t.ids)] = torch.tensor(t.ids, dtype=torch.long)
        mask[b, : len(t.ids)] = 1
        labels[b, : len(t.ids)] = torch.tensor(labels_from_tokenized(t), dtype=torch.long)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross entropy over the labelled positions (fp32), and their count."""
    shifted = labels[:, 1:]
    keep = shifted != -100
    picked = logits[:, :-1][keep].float()
    return torch.nn.functional.cross_entropy(picked, shifted[keep], reduction="sum"), int(keep.sum())


def forward_loss(model, batch: dict[str, torch.Tensor], *, keep_logits: bool = True) -> tuple[torch.Tensor, int]:
    """:func:`loss_sum` of one micro-batch. With ``keep_logits`` the LM head runs only at the
    positions that predict a labelled token in some row (``logits_to_keep``): the prompt's
    positions never reach the vocabulary projection."""
    labels = batch["labels"]
    if not keep_logits:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return loss_sum(logits, labels)
    predicts = (labels[:, 1:] != -100).any(0).nonzero().squeeze(1)  # position t predicts token t + 1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=predicts).logits
    targets = labels[:, predicts + 1]
    keep = targets != -100
    total = torch.nn.functional.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")
    return total, int(keep.sum())


def accepts_logits_to_keep(model) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


def check_target_modules(model, target_modules: Sequence[str]) -> None:
    """Raise naming the model class and the missing names when a LoRA target matches no module."""
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"{type(model).__name__} has no module named {', '.join(missing)} for LoRA; "
                         f"its linear layers are named {', '.join(linear) or '(none)'}: pass those "
                         "with --lora-targets")


def load_causal_lm(name: str | None, dtype: torch.dtype, attn_implementation: str = "sdpa"):
    """The causal-LM model (with its LM head), resolved exactly as ``load_model`` resolves it."""
    from transformers import AutoModelForCausalLM

    from trim_fast.models.loading import _resolve

    path, kw = _resolve(name)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation, **kw)


def _step_plan(lengths: Sequence[int], cfg: WarmupConfig, rng: random.Random) -> list[list[list[int]]]:
    """Per optimizer step, its micro-batches of subset positions; a fresh seeded order each epoch.
    Within a step the examples go to micro-batches by length (less padding): the step's gradient
    is the same sum either way."""
    n = len(lengths)
    plan = []
    for _ in range(cfg.epochs):
        order = list(range(n))
        rng.shuffle(order)
        for s in range(0, n, cfg.effective_batch):
            step = sorted(order[s: s + cfg.effective_batch], key=lambda i: (lengths[i], i))
            plan.append([step[m: m + cfg.micro_batch] for m in range(0, len(step), cfg.micro_batch)])
    return plan


def run_warmup(model_name_or_None, examples: list[Example], tokenizer, cfg: WarmupConfig, out_dir: str,
               *, device=None, progress: bool = True, model_id: str | None = None) -> WarmupResult:
    """Train a LoRA adapter on the seeded ``cfg.fraction`` subset of ``examples``; save it to ``out_dir``.

    ``model_name_or_None``: a model name/path/GGUF file (None: the embedded SmolLM2), or an already
    built causal-LM model, which is then trained in place (peft injects the LoRA layers into it).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import get_cosine_schedule_with_warmup

    from trim_fast.models.loading import model_id as _model_id
    from trim_fast.models.loading import parse_dtype

    t0 = time.perf_counter()
    subset = warmup_subset(len(examples), cfg.fraction, cfg.seed)
    chosen = [examples[i] for i in subset]
    tokenized = [tokenize_example(tokenizer, ex, scope="response", max_length=cfg.max_length) for ex in chosen]
    n_loss_tokens = sum(sum(t.counted[1:]) for t in tokenized)
    if n_loss_tokens == 0:
        raise ValueError(f"warmup: the {len(subset)} subset example(s) have no response token to train "
                         "on (no assistant turn, or all cut by --max-length)")

    if isinstance(model_name_or_None, torch.nn.Module):
        model = model_name_or_None
        dev = torch.device(device) if device is not None else next(model.parameters()).device
        torch_dtype = next(model.parameters()).dtype
        name = model_id or type(model).__name__
    else:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch_dtype = parse_dtype(cfg.dtype, dev)
        model = load_causal_lm(model_name_or_None, torch_dtype)
        name = model_id or _model_id(model_name_or_None)
    if model.get_output_embeddings() is None:
        raise ValueError(f"{type(model).__name__} has no LM head; the warmup needs a causal-LM model "
                         "(AutoModelForCausalLM)")
    check_target_modules(model, cfg.target_modules)

    torch.manual_seed(cfg.seed)  # LoRA A init and dropout masks
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    # autocast_adapter_dtype keeps the LoRA weights fp32 under a bf16/fp16 base: lr 2e-5 updates
    # would round away in bf16.
    peft_model = get_peft_model(model, lora, autocast_adapter_dtype=True).to(dev)
    if cfg.gradient_checkpointing:
        # non-reentrant: works with the frozen embeddings (no enable_input_require_grads needed)
        # and replays the dropout RNG, so the losses equal the plain run's
        base = peft_model.get_base_model()
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(peft_model.config, "use_cache", None):
        peft_model.config.use_cache = False
    peft_model.train()

    keep_logits = accepts_logits_to_keep(model)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    plan = _step_plan([len(t.ids) for t in tokenized], cfg, random.Random(cfg.seed))
    warmup_steps = math.ceil(cfg.warmup_ratio * len(plan))
    sched = get_cosine_schedule_with_warmup(opt, warmup_steps, len(plan))
    scaler = torch.amp.GradScaler(dev.type, enabled=torch_dtype == torch.float16)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), desc="warmup", unit="step", dynamic_ncols=True)
    losses: list[float] = []
    for step in plan:
        step_tokens = sum(sum(tokenized[i].counted[1:]) for mb in step for i in mb)
        step_loss = 0.0
        for mb in step:
            batch = build_training_batch([tokenized[i] for i in mb], pad_id, dev)
            total, count = forward_loss(peft_model, batch, keep_logits=keep_logits)
            if count == 0:
                continue
            # normalised by the whole step's response tokens: the sum of the micro-batch
            # gradients is the gradient of the step's token mean
            scaler.scale(total / max(1, step_tokens)).backward()
            step_loss += total.item()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(step_loss / max(1, step_tokens))
        if bar is not None:
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            bar.update(1)
    if bar is not None:
        bar.close()
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"warmup diverged: non-finite loss {losses}; try a lower --lr or --dtype fp32")

    peft_model.eval()
    os.makedirs(out_dir, exist_ok=True)
    peft_model.save_pretrained(out_dir, save_embedding_layers=False)  # only q/k/v/o train
    seconds = time.perf_counter() - t0
    ids = [ex.id for ex in chosen]
    meta = {
        "model_id": name,
        "subset": {"ids": ids, "indices": subset, "pool_size": len(examples)},
        "params": asdict(cfg),
        "resolved": {"device": str(dev), "dtype": str(torch_dtype).replace("torch.", ""),
                     "optimizer_steps": len(plan), "warmup_steps": warmup_steps,
                     "accumulation_steps": cfg.accumulation_steps, "loss_tokens": n_loss_tokens,
                     "truncated_examples": sum(1 for t in tokenized if t.truncated)},
        "losses": losses,
        "seconds": round(seconds, 3),
    }
    from trim_fast.outputs import write_json

    write_json(meta, os.path.join(out_dir, WARMUP_META))
    return WarmupResult(adapter_dir=out_dir, subset_ids=ids, losses=losses, seconds=seconds,
                        subset_indices=subset)


def read_warmup_meta(adapter_dir: str) -> dict:
    with open(os.path.join(adapter_dir, WARMUP_META), encoding="utf-8") as f:
        return json.load(f)


# --- CLI -------------------------------------------------------------------------------------

_CFG_FLAGS = {  # WarmupConfig field -> (flag, type, help)
    "r": ("--lora-r", int, "LoRA rank"),
    "alpha": ("--lora-alpha", int, "LoRA alpha (scaling alpha / r)"),
    "dropout": ("--lora-dropout", float, "LoRA dropout"),
    "target_modules": ("--lora-targets", str, "comma-separated module names LoRA goes on"),
    "lr": ("--lr", float, "peak learning rate (AdamW)"),
    "epochs": ("--epochs", int, "passes over the subset"),
    "warmup_ratio": ("--warmup-ratio", float, "share of the steps with linear lr warmup (then cosine)"),
    "effective_batch": ("--batch-size", int, "examples per optimizer step (gradient accumulation)"),
    "micro_batch": ("--micro-batch", int, "examples per forward/backward"),
    "weight_decay": ("--weight-decay", float, "AdamW weight decay"),
}


def add_warmup_args(parser: argparse.ArgumentParser, *, for_select: bool = False) -> None:
    """Flags of ``trim-fast warmup``; with ``for_select``, only those ``select`` lacks, plus
    ``--warmup``, ``--warmup-fraction`` and ``--warmup-out`` (select's --model, --pool, --seed,
    --device, --dtype, --max-length, --no-progress are shared), and --lr, --epochs, --batch-size,
    --micro-batch, --weight-decay, --gradient-checkpointing become --warmup-lr, --warmup-epochs ...
    The parsed values land in ``args.warmup_<WarmupConfig field>`` either way."""
    defaults = WarmupConfig()
    if for_select:
        g = parser.add_argument_group("warmup (SPEC 5)")
        g.add_argument("--warmup", action="store_true",
                       help="train a LoRA warmup adapter on a pool subset first and score with it merged")
        g.add_argument("--warmup-fraction", type=float, default=defaults.fraction,
                       help="share of the pool the warmup trains on")
        g.add_argument("--warmup-out", default=None, help="adapter directory (default: OUT/warmup_adapter)")
    else:
        g = parser
        g.add_argument("--model", default=None,
                       help="HF model directory, .gguf file or hub id (default: embedded SmolLM2-135M-Instruct)")
        g.add_argument("--pool", action="append", default=[], metavar="FILE", required=True,
                       help="pool file (repeatable), JSONL or Parquet")
        g.add_argument("--fraction", type=float, default=defaults.fraction,
                       help="share of the pool trained on (seeded random subset)")
        g.add_argument("--out", required=True, help="adapter directory (peft format + trim_warmup.json)")
        g.add_argument("--seed", type=int, default=defaults.seed)
        g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
        g.add_argument("--dtype", default=defaults.dtype, choices=["auto", "fp32", "fp16", "bf16"],
                       help="auto: bf16 on GPU, fp32 on CPU")
        g.add_argument("--max-length", type=int, default=defaults.max_length,
                       help="longer examples are truncated")
        g.add_argument("--no-progress", action="store_true", help="no progress bar")
    for fname, (flag, typ, text) in _CFG_FLAGS.items():
        default = getattr(defaults, fname)
        shown = ",".join(default) if fname == "target_modules" else default
        cpu = f"; on CPU {CPU_DEFAULTS[fname]:g} unless given" if fname in CPU_DEFAULTS else ""
        # None: "not given", so that the CPU defaults can apply
        g.add_argument(_flag(flag, for_select), dest=f"warmup_{fname}", metavar=fname.upper(), type=typ,
                       default=None,
                       help=f"{text} (default {shown}{cpu})")
    g.add_argument(_flag("--gradient-checkpointing", for_select), dest="warmup_gradient_checkpointing",
                   action="store_true", help="recompute activations in backward: less memory, slower")


def _flag(flag: str, for_select: bool) -> str:
    """On ``select``, the generic names (--lr, --epochs ...) get a ``--warmup-`` prefix."""
    if for_select and not flag.startswith(("--lora-", "--warmup-")):
        return "--warmup-" + flag[2:]
    return flag


def config_from_args(args, *, device: torch.device, fraction: float) -> tuple[WarmupConfig, dict]:
    """The config of the flags given; on CPU, :data:`CPU_DEFAULTS` fill the flags not given.
    Returns the config and the CPU defaults that were applied."""
    kw = {"fraction": fraction, "seed": args.seed, "dtype": args.dtype, "max_length": args.max_length,
          "gradient_checkpointing": args.warmup_gradient_checkpointing}
    for fname in _CFG_FLAGS:
        value = getattr(args, f"warmup_{fname}")
        if value is not None:
            kw[fname] = tuple(s.strip() for s in value.split(",") if s.strip()) if fname == "target_modules" else value
    applied = {}
    if device.type == "cpu":
        applied = {k: v for k, v in CPU_DEFAULTS.items() if k not in kw}
        kw.update(applied)
    return WarmupConfig(**kw), applied


def _log(msg: str) -> None:
    print(f"[trim-fast] {msg}", file=sys.stderr, flush=True)


def warmup_from_args(args, pool: list[Example], tokenizer, out_dir: str, fraction: float) -> WarmupResult:
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg, applied = config_from_args(args, device=dev, fraction=fraction)
    if applied:
        _log("warmup on CPU: using the CPU defaults " + ", ".join(f"{k}={v:g}" for k, v in applied.items())
             + " (SPEC defaults: " + ", ".join(f"{k}={getattr(WarmupConfig(), k):g}" for k in applied)
             + "); pass the flags to override")
    _log(f"warmup: {cfg.fraction:g} of {len(pool)} examples, r={cfg.r} alpha={cfg.alpha:g} "
         f"lr={cfg.lr:g} epochs={cfg.epochs} batch={cfg.effective_batch} on {dev}")
    result = run_warmup(args.model, pool, tokenizer, cfg, out_dir, device=dev, progress=not args.no_progress)
    _log(f"warmup: {len(result.subset_ids)} examples, {len(result.losses)} steps, loss "
         f"{result.losses[0]:.4f} -> {result.losses[-1]:.4f} in {result.seconds:.1f}s -> {out_dir}")
    return result


def cmd_warmup(args) -> int:
    """``trim-fast warmup``: train and save the adapter; print its directory."""
    from trim_fast.data import load_examples
    from trim_fast.models.loading import load_tokenizer

    if not 0.0 < args.fraction <= 1.0:
        raise ValueError(f"--fraction must be in (0, 1], got {args.fraction}")
    pool = load_examples(args.pool)
    tok = load_tokenizer(args.model)
    warmup_from_args(args, pool, tok, args.out, args.fraction)
    print(args.out)
    return 0


def maybe_warmup_for_select(args, pool: list[Example], out_dir: str) -> WarmupResult | None:
    """For ``select --warmup``: train on the pool, then point ``args.adapter`` at the adapter.
    Call before the scoring model is loaded; returns None without ``--warmup``."""
    if not getattr(args, "warmup", False):
        return None
    if getattr(args, "adapter", None):
        raise ValueError("--warmup and --adapter together: --warmup trains its own adapter; pass one")
    from trim_fast.models.loading import load_tokenizer

    if not 0.0 < args.warmup_fraction <= 1.0:
        raise ValueError(f"--warmup-fraction must be in (0, 1], got {args.warmup_fraction}")
    adapter_dir = args.warmup_out or os.path.join(out_dir, "warmup_adapter")
    result = _reusable_warmup(args, pool, adapter_dir)
    if result is None:
        result = warmup_from_args(args, pool, load_tokenizer(args.model), adapter_dir,
                                  args.warmup_fraction)
    args.adapter = adapter_dir
    return result


def _reusable_warmup(args, pool: list[Example], adapter_dir: str) -> WarmupResult | None:
    """The adapter a previous ``select --warmup`` left in ``adapter_dir``, when it was trained
    with the same model, settings and subset: a resumed run must not retrain (and change) it."""
    from trim_fast.models.loading import model_id

    try:
        meta = read_warmup_meta(adapter_dir)
    except (OSError, ValueError):
        return None
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg, _ = config_from_args(args, device=dev, fraction=args.warmup_fraction)
    subset = warmup_subset(len(pool), cfg.fraction, cfg.seed)
    same = (meta.get("model_id") == model_id(args.model)
            and meta.get("params") == json.loads(json.dumps(asdict(cfg)))
            and meta.get("subset", {}).get("ids") == [pool[i].id for i in subset]
            and os.path.exists(os.path.join(adapter_dir, "adapter_config.json")))
    if not same:
        return None
    _log(f"warmup: reusing the adapter in {adapter_dir} (same model, settings and subset)")
    return WarmupResult(adapter_dir=adapter_dir, subset_ids=meta["subset"]["ids"],
                        losses=meta["losses"], seconds=meta["seconds"], subset_indices=subset)


__all__ = ["WarmupConfig", "WarmupResult", "CPU_DEFAULTS", "warmup_subset", "build_training_batch",
           "labels_from_tokenized", "loss_sum", "forward_loss", "check_target_modules", "run_warmup", "add_warmup_args",
           "config_from_args", "cmd_warmup", "maybe_warmup_for_select", "read_warmup_meta"]
