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

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from trim_fast.errors import ConfigError, DataError, ModelError, UnsupportedModelError
from trim_fast.config import WarmupConfig, as_dict
from trim_fast.data import Example, Tokenized, tokenize_example
from trim_fast.progress import Progress

logger = logging.getLogger(__name__)
WARMUP_META = "trim_warmup.json"


@dataclass
class WarmupResult:
    adapter_dir: str
    subset_ids: list[str]
    losses: list[float]  # one per optimizer step: mean loss over the step's response tokens
    seconds: float
    subset_indices: list[int] = field(default_factory=list)


def warmup_subset(num_examples: int, fraction: float, seed: int) -> list[int]:
    """Sorted pool indices of the seeded random ``round(fraction * n)`` subset (half up, >= 1)."""
    from trim_fast.selection import num_selected

    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"warmup fraction must be in (0, 1], got {fraction}")
    if num_examples < 1:
        raise DataError("warmup: the pool is empty, there is nothing to train on")
    k = num_selected(num_examples, fraction=fraction)
    return sorted(random.Random(seed).sample(range(num_examples), k))


def _size(examples) -> int:
    """A list's length, or a streamed pool's count (``Records``), without holding the pool."""
    return len(examples) if isinstance(examples, Sequence) else examples.count()


def _take(examples, indices: list[int]) -> list[Example]:
    return [examples[i] for i in indices] if isinstance(examples, Sequence) else examples.take(indices)


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
        raise UnsupportedModelError(f"{type(model).__name__} has no module named {', '.join(missing)} for LoRA; "
                         f"its linear layers are named {', '.join(linear) or '(none)'}: pass those "
                         "with --lora-targets")


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


def run_warmup(model_name_or_None, examples, tokenizer, cfg: WarmupConfig, out_dir: str,
               *, device=None, progress: bool = False, model_id: str | None = None) -> WarmupResult:
    """Train a LoRA adapter on the seeded ``cfg.fraction`` subset of ``examples``; save it to ``out_dir``.

    ``model_name_or_None``: a model name/path/GGUF file (None: the embedded SmolLM2), or an already
    built causal-LM model, which is then trained in place (peft injects the LoRA layers into it).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import get_cosine_schedule_with_warmup

    from trim_fast.models.loading import load_causal_lm
    from trim_fast.models.loading import model_id as _model_id
    from trim_fast.models.loading import parse_dtype

    t0 = time.perf_counter()
    pool_size = _size(examples)
    subset = warmup_subset(pool_size, cfg.fraction, cfg.seed)
    chosen = _take(examples, subset)
    tokenized = [tokenize_example(tokenizer, ex, scope="response", max_length=cfg.max_length) for ex in chosen]
    n_loss_tokens = sum(sum(t.counted[1:]) for t in tokenized)
    if n_loss_tokens == 0:
        raise DataError(f"warmup: the {len(subset)} subset example(s) have no response token to train "
                         "on (no assistant turn, or all cut by --max-length)")

    if isinstance(model_name_or_None, torch.nn.Module):
        model = model_name_or_None
        dev = torch.device(device) if device is not None else next(model.parameters()).device
        torch_dtype = next(model.parameters()).dtype
        name = model_id or type(model).__name__
    else:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch_dtype = parse_dtype(cfg.dtype, dev)
        model = load_causal_lm(model_name_or_None, dtype=torch_dtype, progress=progress)
        name = model_id or _model_id(model_name_or_None)
    if model.get_output_embeddings() is None:
        raise ModelError(f"{type(model).__name__} has no LM head; the warmup needs a causal-LM model "
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

    bar = Progress(len(plan), "warmup", progress, unit="step")
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
        bar.update(1, loss=f"{losses[-1]:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
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
        "subset": {"ids": ids, "indices": subset, "pool_size": pool_size,
                   "digests": [ex.digest().hex() for ex in chosen]},
        "params": as_dict(cfg),
        "resolved": {"device": str(dev), "dtype": str(torch_dtype).replace("torch.", ""),
                     "optimizer_steps": len(plan), "warmup_steps": warmup_steps,
                     "accumulation_steps": cfg.accumulation_steps, "loss_tokens": n_loss_tokens,
                     "truncated_examples": sum(1 for t in tokenized if t.truncated)},
        "losses": losses,
        "seconds": round(seconds, 3),
    }
    from trim_fast.run.outputs import write_json

    write_json(meta, os.path.join(out_dir, WARMUP_META))
    return WarmupResult(adapter_dir=out_dir, subset_ids=ids, losses=losses, seconds=seconds,
                        subset_indices=subset)


def read_warmup_meta(adapter_dir: str) -> dict:
    with open(os.path.join(adapter_dir, WARMUP_META), encoding="utf-8") as f:
        return json.load(f)


def reusable_adapter(adapter_dir: str, model_name: str, examples: Sequence[Example],
                     cfg: WarmupConfig) -> WarmupResult | None:
    """The adapter an earlier warmup left in ``adapter_dir``, when it was trained with the same
    model (name; a local directory by its resolved path), settings and subset (its records by
    content): a resumed run must not retrain (and change) it. New weights saved under the same
    model path are not seen here; the scoring run then refuses its work directory, whose
    manifest holds the merged weights' digest."""
    try:
        meta = read_warmup_meta(adapter_dir)
    except (OSError, ValueError):
        return None
    subset = warmup_subset(_size(examples), cfg.fraction, cfg.seed)
    chosen = _take(examples, subset)
    same = (_model_key(meta.get("model_id")) == _model_key(model_name)
            and meta.get("params") == as_dict(cfg)
            and meta.get("subset", {}).get("ids") == [ex.id for ex in chosen]
            and meta.get("subset", {}).get("digests") == [ex.digest().hex() for ex in chosen]
            and os.path.exists(os.path.join(adapter_dir, "adapter_config.json")))
    if not same:
        return None
    logger.info("warmup: reusing the adapter in %s (same model, settings and subset)", adapter_dir)
    return WarmupResult(adapter_dir=adapter_dir, subset_ids=meta["subset"]["ids"],
                        losses=meta["losses"], seconds=meta["seconds"], subset_indices=subset)


def _model_key(name):
    """A local model directory or file by its resolved path; anything else as named."""
    return os.path.realpath(name) if isinstance(name, str) and os.path.exists(name) else name


__all__ = ["WarmupResult", "warmup_subset", "build_training_batch", "labels_from_tokenized",
           "loss_sum", "forward_loss", "check_target_modules", "run_warmup", "read_warmup_meta",
           "reusable_adapter"]
