"""From the model object a frontend holds to the base transformer a forward pass runs.

A frontend may hold a base model, a ``*ForCausalLM``, a peft ``PeftModel`` or any of those inside
DistributedDataParallel / DataParallel / accelerate / ``torch.compile``. Selection only runs the
base model (the LM head never runs), with the weights the holder's own forward would use: a LoRA
adapter is merged for the duration of :func:`forward_model` and the holder's weights come back
bit for bit afterwards, so a frontend can go on training the very same objects.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch import nn

log = logging.getLogger("trim_fast.models")

ACCEPTED = ("a transformers PreTrainedModel (a base model or a *ForCausalLM), a peft PeftModel, or "
            "one of those inside DistributedDataParallel, DataParallel, accelerate or torch.compile")


@contextlib.contextmanager
def forward_model(model) -> Iterator[nn.Module]:
    """Yield the base transformer (no LM head) of ``model``, in eval mode, ready for forward passes.

    A ``PeftModel``'s active adapters are merged into copies of the targeted weights for the
    duration (the same arithmetic as peft's ``merge_and_unload``, so the outputs equal those of
    the model ``load_model(name, adapter=DIR)`` builds); on exit the original weight tensors and
    peft's merged-state bookkeeping are put back, untouched. Refused: train mode (dropout would
    make fingerprints random), FSDP/ZeRO-3 sharding (one rank does not hold the weights), and
    anything that is not a transformers model.
    """
    if not isinstance(model, nn.Module):
        hint = " (a model name or path: load it with trim_fast.models.loading.load_model)" \
            if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__") else ""
        raise TypeError(f"forward_model: got {_type_name(model)}{hint}; expected {ACCEPTED}")
    _refuse_sharded(model)
    inner = unwrap(model)
    training = next((n for n, m in inner.named_modules() if m.training), None)
    if training is not None:
        where = "" if training == "" else f" (submodule {training!r})"
        raise ValueError(f"{_type_name(inner)} is in training mode{where} (dropout active): call "
                         "model.eval() before selecting, and model.train() after to go on training")
    peft_model = _as_peft(inner)
    if peft_model is None:
        yield _base_of(inner, model)
        return
    with _merged(peft_model):
        yield _base_of(peft_model.get_base_model(), model)


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel (``.module``), torch.compile (``._orig_mod``) and accelerate's
    containers (``extract_model_from_parallel``), in any nesting."""
    for _ in range(16):
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
            continue
        orig = model.__dict__.get("_modules", {}).get("_orig_mod")  # torch.compile's OptimizedModule
        if isinstance(orig, nn.Module):
            model = orig
            continue
        try:
            from accelerate.utils import extract_model_from_parallel
        except ImportError:
            return model
        inner = extract_model_from_parallel(model, keep_fp32_wrapper=True, keep_torch_compile=False)
        if inner is model:
            return model
        model = inner
    raise TypeError(f"forward_model: {_type_name(model)} is wrapped more than 16 levels deep")


def _refuse_sharded(model: nn.Module) -> None:
    """FSDP (1 and 2), DTensor and DeepSpeed ZeRO-3 parameters live in shards across ranks: a
    forward on the base model outside the wrapper would see placeholders, not the weights."""
    kinds = []
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FullyShardedDataParallel
        try:
            from torch.distributed.fsdp import FSDPModule
        except ImportError:  # torch < 2.6
            FSDPModule = FullyShardedDataParallel
        if any(isinstance(m, (FullyShardedDataParallel, FSDPModule)) for m in model.modules()):
            kinds.append("FSDP")
        else:
            from torch.distributed.tensor import DTensor
            if any(isinstance(p, DTensor) for p in model.parameters()):
                kinds.append("DTensor")
    if not kinds and any(hasattr(p, "ds_id") for p in model.parameters()):
        kinds.append("DeepSpeed ZeRO-3")
    if kinds:
        raise ValueError(f"{_type_name(model)} is sharded ({kinds[0]}): no rank holds the whole "
                         "weights, so selection cannot run its base model. Pass the model name or "
                         "path (each rank loads it whole), or gather the full weights first.")


def _as_peft(model: nn.Module):
    """The ``PeftModel`` (None for plain models); prompt-learning adapters are refused: their
    virtual tokens change the input, not the weights, so there is nothing to merge."""
    try:
        from peft import PeftModel
    except ImportError:
        return None
    if not isinstance(model, PeftModel):
        return None
    config = model.active_peft_config
    if config.is_prompt_learning:
        raise TypeError(f"forward_model: a PeftModel with a {config.peft_type} adapter (prompt "
                        "learning) adds virtual tokens and cannot be merged into the weights; "
                        "only weight adapters (LoRA and the like) are supported")
    return model


def _base_of(model: nn.Module, given) -> nn.Module:
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        inside = "" if model is given else f" (inside {_type_name(given)})"
        raise TypeError(f"forward_model: got {_type_name(model)}{inside}; expected {ACCEPTED}")
    return model.base_model


@contextlib.contextmanager
def _merged(peft_model) -> Iterator[None]:
    """Merge the active adapters into *copies* of the base weights, and put the originals back.

    Each outermost tuner layer's base-layer parameters get a fresh clone as ``.data``; peft's own
    ``layer.merge()`` then writes into the clones (``weight.data += delta``, the exact operation
    ``merge_and_unload`` performs, so the merged values are the same bits). On exit every
    parameter (the object, in its module's slot) gets back the tensor it had, which nothing wrote
    to, and the layer's ``merged_adapters`` list and variant caches (DoRA's weight norms) are
    restored.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    saved = []  # (layer, [(module, name, param, original data)], merged_adapters, caches)
    outer: list[str] = []
    try:
        with torch.no_grad(), torch.inference_mode(False):
            for name, layer in peft_model.named_modules():
                if not isinstance(layer, BaseTunerLayer) or any(name.startswith(o + ".") for o in outer):
                    continue
                outer.append(name)
                if layer.disable_adapters:  # the forward uses the base weights alone
                    continue
                # (module, name, parameter, data): a merge may also replace the Parameter object
                # itself (bitsandbytes 4/8-bit, torchao), so the slot is restored too
                slots = [(m, n, p, p.data) for m in layer.get_base_layer().modules()
                         for n, p in m._parameters.items() if p is not None]
                saved.append((layer, slots, list(layer.merged_adapters),
                              dict(getattr(layer, "_caches", {}))))
                for _, _, p, _ in slots:
                    p.data = p.data.clone()
                with _no_peft_warnings():
                    layer.merge()
        log.debug("%s: adapters merged into copies of %d layers' weights for the forward",
                  type(peft_model).__name__, len(saved))
        yield
    finally:
        for layer, originals, merged_adapters, caches in reversed(saved):
            for module, name, p, data in originals:
                module._parameters[name] = p
                p.data = data
            layer.merged_adapters[:] = merged_adapters
            if hasattr(layer, "_caches"):
                layer._caches.clear()
                layer._caches.update(caches)


@contextlib.contextmanager
def _no_peft_warnings():
    """peft warns when an adapter is already merged; here that is expected (merging is idempotent)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*already merged", category=UserWarning)
        yield


def forward_weights(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for the weights a forward pass of ``module`` reads, named as in the
    plain model: a merged (or disabled) peft tuner layer contributes its base layer's weights
    under its own name, a ``ModulesToSaveWrapper`` its active copy. So a base model yielded by
    :func:`forward_model` for a ``PeftModel`` lists the same names as the merged-and-unloaded
    model. Parameters and persistent buffers, each shared tensor once."""
    seen: set[int] = set()
    yield from _walk(module, "", seen)


def _walk(module: nn.Module, prefix: str, seen: set[int]) -> Iterator[tuple[str, torch.Tensor]]:
    module = _forward_view(module)
    tensors = list(module.named_parameters(recurse=False)) + [
        (n, b) for n, b in module.named_buffers(recurse=False)
        if b is not None and n not in module._non_persistent_buffers_set]
    for name, t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            yield prefix + name, t
    for name, child in module.named_children():
        yield from _walk(child, f"{prefix}{name}.", seen)


def _forward_view(module: nn.Module) -> nn.Module:
    """The module whose weights the forward of ``module`` actually uses (itself by default)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import ModulesToSaveWrapper
    except ImportError:
        return module
    if isinstance(module, BaseTunerLayer) and (
            module.disable_adapters or set(module.active_adapters) <= set(module.merged_adapters)):
        return _forward_view(module.get_base_layer())
    if isinstance(module, ModulesToSaveWrapper):
        active = module.active_adapters
        if module.disable_adapters or not active or active[0] not in module.modules_to_save:
            return _forward_view(module.original_module)
        return _forward_view(module.modules_to_save[active[0]])
    return module


def _type_name(obj) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
