"""The identity of a model's weights (:func:`weights_digest`), for bank headers and run manifests."""
from __future__ import annotations

import torch

from trim_fast.digests import weights_identity


_BLOCK = 256               # a chunk is summed as blocks of 256 rows x 256 columns
_DIGEST_CHUNK = 1 << 18    # elements converted at once: small enough to stay in cache
_DIGEST_SAMPLE = 256       # exact bf16 values kept per tensor


def weights_digest(model: torch.nn.Module) -> str:
    """Identity of the weights a forward pass of ``model`` uses (apply it to the base model
    :func:`~trim_fast.models.prepare.forward_model` yields), for bank headers and manifests.

    Each floating tensor is rounded to bfloat16, so fp32 and bf16 loads of the same weights
    agree. Its bf16 bit patterns, read as int16 integers, are laid out as 256x256 blocks (the
    last one padded with zeros) and summed along each row and each column of every block. A sum
    of at most 256 integers below 2**15 stays below 2**23, where float32 holds every integer
    exactly, so each sum is exact whatever the reduction order: CPU and CUDA, any thread count,
    give the same integers. The sha256 covers each tensor's name and shape, those sums and a
    strided sample of 256 exact bf16 values; integer tensors are hashed as bytes. Paths play no
    part (two spellings of one directory give one digest); overwritten weights or another
    adapter give another. Changes below bf16 resolution (or fp16-only loads) are out of scope.
    """
    from trim_fast.models.prepare import forward_weights


    def parts():
        for name, t in forward_weights(model):
            if t.device.type == "meta":
                raise ValueError(f"weights_digest: {name} is on the meta device (offloaded or not "
                                 "loaded); load the model's weights first")
            yield f"{name}\0{tuple(t.shape)}\0".encode()
            yield _tensor_summary(t.detach()).cpu().numpy().tobytes()

    with torch.no_grad():
        return weights_identity(parts())


def _tensor_summary(t: torch.Tensor) -> torch.Tensor:
    if not t.is_floating_point():
        return t.reshape(-1).to(torch.uint8) if t.dtype == torch.bool else t.reshape(-1).view(torch.uint8)
    flat = t.reshape(-1)
    size = _BLOCK * _BLOCK
    parts = []
    for i in range(0, flat.numel(), _DIGEST_CHUNK):
        v = _bf16_bits(flat[i: i + _DIGEST_CHUNK]).to(torch.float32)  # exact: |v| <= 2**15
        if v.numel() % size:
            v = torch.nn.functional.pad(v, (0, size - v.numel() % size))
        v = v.view(-1, _BLOCK, _BLOCK)
        parts += [v.sum(dim=2).reshape(-1), v.sum(dim=1).reshape(-1)]
    sample = _bf16_bits(flat[:: max(1, flat.numel() // _DIGEST_SAMPLE)][:_DIGEST_SAMPLE])
    return torch.cat([*parts, sample.to(torch.float32)]).to(torch.int32)


def _bf16_bits(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).view(torch.int16)
