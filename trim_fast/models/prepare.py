"""INTERIM (replaced by the models branch): objects a frontend holds -> the base transformer."""
from __future__ import annotations

import contextlib
import hashlib

import torch


@contextlib.contextmanager
def forward_model(model):
    from transformers import PreTrainedModel

    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    if not isinstance(inner, PreTrainedModel):
        raise TypeError(f"expected a transformers model, got {type(model).__name__}")
    if inner.training:
        raise ValueError(f"{type(inner).__name__} is in training mode; call model.eval() first")
    yield inner.base_model


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
    return h.hexdigest()[:16]
