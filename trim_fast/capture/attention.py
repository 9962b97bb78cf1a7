"""The capture hook: a transformers attention function that is plain SDPA everywhere except in
the last ``L`` layers, where it also computes the saliency statistics of SPEC section 1 from
``q`` and ``k`` with :func:`trim_fast.ops.attention_saliency_varlen` (O(n) memory per head).

How it plugs in: ``capture_attention_forward`` is registered in transformers'
``AttentionInterface`` under :data:`ATTN_IMPLEMENTATION`, and ``sdpa_mask`` under the same name
in ``AttentionMaskInterface`` (without that entry the model builds no mask at all and causal
and padding masking silently disappear). :func:`capturing` switches a loaded model to it and
back. The layers to capture are tagged with a :class:`LayerCapture` attribute; an untagged
attention module costs one ``getattr`` over plain SDPA.

Not thread-safe for one model: two threads capturing the same model at once would share its
tags. Different models are independent.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from trim_fast.ops.attention_saliency import BACKENDS, attention_saliency_varlen
from trim_fast.errors import UnsupportedModelError
from trim_fast.types import SaliencyStats

ATTN_IMPLEMENTATION = "trim_fast_capture"
FALLBACK_FLAG = "--saliency eager"
LSE_MODES = ("auto", "off")
_SLOT_ATTR = "_trim_fast_capture_slot"


class CaptureUnsupportedError(UnsupportedModelError, RuntimeError):
    """The model's attention cannot be captured through transformers' AttentionInterface."""


def _unsupported(model: torch.nn.Module, why: str) -> CaptureUnsupportedError:
    return CaptureUnsupportedError(
        f"{type(model).__name__}: {why}; its attention cannot be captured by trim_fast. "
        f"Use the eager output_attentions path instead ({FALLBACK_FLAG})."
    )


# ---------------------------------------------------------------------------------------------
# Padding layout: per-example valid spans, packed varlen form
# ---------------------------------------------------------------------------------------------


@dataclass
class PackedLayout:
    """Where the valid tokens of a padded ``[B, N]`` batch sit once packed end to end.

    Every row of the attention mask must be one contiguous run of ones (left, right or no
    padding). ``flat_index`` ``[total]`` indexes ``B * N``; ``cu_seqlens`` ``[B + 1]`` int32.
    """

    valid: torch.Tensor  # [B, N] bool
    start: torch.Tensor  # [B] first valid position
    lengths: torch.Tensor  # [B]
    flat_index: torch.Tensor  # [total]
    cu_seqlens: torch.Tensor  # [B + 1] int32
    max_seqlen: int

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    @property
    def seq_len(self) -> int:
        return self.valid.shape[1]

    def position_ids(self) -> torch.Tensor:
        """Positions counted from each example's first valid token, so that left padding gives
        the same hidden states as right padding or no padding (padding positions: 0)."""
        pos = torch.arange(self.seq_len, device=self.valid.device)[None, :] - self.start[:, None]
        return pos.clamp_min(0) * self.valid

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, ...]`` -> ``[total, ...]``."""
        if self.flat_index.numel() == self.batch * self.seq_len:  # no padding
            return x.reshape(self.batch * self.seq_len, *x.shape[2:])
        return x.reshape(self.batch * self.seq_len, *x.shape[2:]).index_select(0, self.flat_index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """``[total, ...]`` -> ``[B, N, ...]`` with zeros at padding."""
        out = x.new_zeros((self.batch * self.seq_len, *x.shape[1:]))
        out.index_copy_(0, self.flat_index, x)
        return out.reshape(self.batch, self.seq_len, *x.shape[1:])


def packed_layout(attention_mask: torch.Tensor) -> PackedLayout:
    """Valid spans of a ``[B, N]`` 0/1 attention mask; a row with holes is refused (its sliding
    window would differ between the padded and the packed coordinates)."""
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be [B, N], got shape {tuple(attention_mask.shape)}")
    if attention_mask.is_floating_point() and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 and 1")
    valid = attention_mask.bool()
    b, n = valid.shape
    device = valid.device
    lengths = valid.sum(1)
    pos = torch.arange(n, device=device)[None, :]
    start = torch.where(lengths > 0, (pos + n * (~valid)).min(1).values, torch.zeros_like(lengths))
    span = (pos >= start[:, None]) & (pos < (start + lengths)[:, None])
    if not torch.equal(span, valid):
        bad = int((span != valid).any(1).nonzero()[0])
        raise ValueError(
            f"attention_mask row {bad} is not one contiguous run of ones; only left or right "
            f"padding is supported: {valid[bad].int().tolist()[:32]}")
    flat_index = (torch.arange(b, device=device)[:, None] * n + pos).masked_select(valid)
    cu = torch.zeros(b + 1, dtype=torch.int32, device=device)
    cu[1:] = torch.cumsum(lengths, 0)
    max_len = int(lengths.max()) if b else 0
    return PackedLayout(valid, start, lengths, flat_index, cu, max_len)


# ---------------------------------------------------------------------------------------------
# The attention function
# ---------------------------------------------------------------------------------------------

StatsFn = Callable[..., SaliencyStats]


def default_stats_fn(q, k, cu_seqlens, *, max_seqlen, causal, scale, window, lse, backend):
    return attention_saliency_varlen(q, k, cu_seqlens, max_seqlen=max_seqlen, causal=causal,
                                     scale=scale, window=window, lse=lse, backend=backend)


@dataclass
class CaptureSession:
    """One capture: the layers tagged, the batch layout, and where each layer's stats land."""

    layer_indices: tuple[int, ...]
    backend: str = "auto"
    lse: str = "auto"
    stats_fn: StatsFn = default_stats_fn
    layout: PackedLayout | None = None
    stats: dict[int, SaliencyStats] = field(default_factory=dict)
    windows: dict[int, int | None] = field(default_factory=dict)
    cuda_lse_ok: bool = True  # False once the CUDA lse route failed its check in this capture
    cuda_lse_checked: bool = False
    _float_masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def begin(self, layout: PackedLayout) -> None:
        self.layout = layout
        self.stats.clear()
        self.windows.clear()
        self._float_masks.clear()

    def float_mask(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive version of the boolean SDPA mask, built once per forward (layers share it)."""
        key = id(mask)
        hit = self._float_masks.get(key)
        if hit is not None and hit[0] is mask and hit[1].dtype == dtype:
            return hit[1]
        add = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
        self._float_masks[key] = (mask, add)
        return add


@dataclass
class LayerCapture:
    """The tag on one captured attention module."""

    session: CaptureSession
    layer_idx: int
    causal: bool


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, h_kv, n, d = x.shape
    return x[:, :, None].expand(b, h_kv, n_rep, n, d).reshape(b, h_kv * n_rep, n, d)


def _sdpa_with_lse_cpu(session, query, key, value, attention_mask, *, scale, causal):
    """CPU flash attention, which returns the row log-sum-exp (natural log, of ``scale * q k^T``
    after masking; ``[B, H, N]`` fp32) next to the output. Same kernel F.sdpa picks on the CPU."""
    n_rep = query.shape[1] // key.shape[1]
    key, value = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
    is_causal = False
    if attention_mask is None:
        is_causal = causal and query.shape[2] > 1
    elif attention_mask.dtype == torch.bool:
        attention_mask = session.float_mask(attention_mask, query.dtype)
    else:
        attention_mask = attention_mask.to(query.dtype)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, is_causal, attn_mask=attention_mask, scale=scale)
    return out.transpose(1, 2).contiguous(), lse


def _sdpa_with_lse_cuda(query, key, value, *, scale, causal):
    """CUDA flash attention for an unmasked batch (no padding, no active window): ``(out, lse)``
    with lse ``[B, H, N]``. Not run on a GPU yet: the first call of each capture is spot-checked
    (:func:`lse_matches`) and the capture falls back to plain SDPA if it disagrees."""
    n_rep = query.shape[1] // key.shape[1]
    key, value = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
    res = torch.ops.aten._scaled_dot_product_flash_attention(
        query, key, value, 0.0, causal and query.shape[2] > 1, False, scale=scale)
    return res[0].transpose(1, 2).contiguous(), res[1][..., : query.shape[2]].float()


def lse_matches(query, key, lse, *, scale, causal) -> bool:
    """Spot-check an unmasked batch's ``lse`` ``[B, H, N]`` against ``logsumexp(scale q k^T)``
    (natural log, over the visible keys) recomputed in fp32 for the first and last row of
    example 0, every head. O(n) work."""
    if tuple(lse.shape) != tuple(query.shape[:3]):
        return False
    n = query.shape[2]
    k0 = key[0].float().repeat_interleave(query.shape[1] // key.shape[1], dim=0)  # [H, N, D]
    for r in sorted({0, n - 1}):
        keys = k0[:, : r + 1] if causal else k0
        s = torch.einsum("hd,hnd->hn", query[0, :, r].float(), keys) * scale
        want = torch.logsumexp(s, dim=-1)
        got = lse[0, :, r].float()
        if not bool(torch.all((got - want).abs() <= 1e-2 + 1e-3 * want.abs())):
            return False
    return True


def _lse_route(query, key, attention_mask, session: CaptureSession) -> str | None:
    """Which attention call can hand its lse to the saliency call, or None (plain SDPA; the
    saliency kernel then computes lse in its own first pass)."""
    if session.lse != "auto" or query.shape[2] != key.shape[2]:
        return None
    if query.device.type == "cpu" and query.dtype in (torch.float32, torch.bfloat16, torch.float16):
        return "cpu"
    if (query.device.type == "cuda" and attention_mask is None and session.cuda_lse_ok
            and query.dtype in (torch.float16, torch.bfloat16)
            and query.shape[-1] % 8 == 0 and query.shape[-1] <= 256):
        return "cuda"
    return None


def _attention_with_lse(session, module, query, key, value, attention_mask, kwargs, *, scale, causal):
    """``(out [B, N, H, D], lse [B, H, N] or None)``."""
    route = _lse_route(query, key, attention_mask, session)
    if route == "cpu":
        return _sdpa_with_lse_cpu(session, query, key, value, attention_mask, scale=scale, causal=causal)
    if route == "cuda":
        try:
            out, lse = _sdpa_with_lse_cuda(query, key, value, scale=scale, causal=causal)
            ok = session.cuda_lse_checked or lse_matches(query, key, lse, scale=scale, causal=causal)
        except RuntimeError as e:  # kernel not built for this GPU / shape
            ok, why = False, f"{type(e).__name__}: {e}"
        else:
            why = "its lse disagrees with logsumexp(scale q k^T)"
        if ok:
            session.cuda_lse_checked = True
            return out, lse
        session.cuda_lse_ok = False
        warnings.warn(f"trim_fast capture: CUDA flash attention lse not used ({why}); falling back "
                      "to plain SDPA, the saliency kernel computes lse itself", RuntimeWarning)
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return out, None


def _captured_forward(slot: LayerCapture, module, query, key, value, attention_mask, **kwargs):
    session = slot.session
    layout = session.layout
    if kwargs.get("softcap") is not None:
        raise _unsupported(module, "attention logit softcapping is not supported by the saliency kernels")
    if kwargs.get("position_bias") is not None:
        raise _unsupported(module, "an attention position bias is not supported by the saliency kernels")
    if float(kwargs.get("dropout", 0.0) or 0.0) > 0.0:
        raise ValueError(f"{type(module).__name__}: attention dropout is active; call model.eval() "
                         "before capturing saliency")
    if layout is None or query.shape[0] != layout.batch or query.shape[2] != layout.seq_len \
            or key.shape[2] != layout.seq_len:
        raise RuntimeError(f"{type(module).__name__}: captured attention called outside "
                           "capture_saliency, or with a cache / different shape")
    if slot.layer_idx in session.stats:
        raise _unsupported(module, f"layer {slot.layer_idx} called its attention twice in one forward")
    scale = kwargs.get("scaling")
    scale = float(query.shape[-1] ** -0.5 if scale is None else scale)
    window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
    causal = slot.causal if kwargs.get("is_causal") is None else bool(kwargs["is_causal"]) and slot.causal
    window = kernel_window(window, causal)

    out, lse = _attention_with_lse(session, module, query, key, value, attention_mask, kwargs,
                                   scale=scale, causal=causal)
    lse_packed = None if lse is None else layout.pack(lse.transpose(1, 2)).transpose(0, 1)  # [H, total]
    q = layout.pack(query.transpose(1, 2))  # [total, H, D]
    k = layout.pack(key.transpose(1, 2))  # [total, H_kv, D]
    session.stats[slot.layer_idx] = session.stats_fn(
        q, k, layout.cu_seqlens, max_seqlen=layout.max_seqlen, causal=causal, scale=scale,
        window=window, lse=lse_packed, backend=session.backend)
    session.windows[slot.layer_idx] = window
    return out, None


def capture_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """The registered attention function: plain SDPA unless ``module`` is tagged for capture."""
    slot = getattr(module, _SLOT_ATTR, None)
    if slot is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return _captured_forward(slot, module, query, key, value, attention_mask, **kwargs)


_REGISTERED = False


def register() -> None:
    """Register the attention function and its mask function (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, capture_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    _REGISTERED = True


# ---------------------------------------------------------------------------------------------
# Model inspection and the switch
# ---------------------------------------------------------------------------------------------


def kernel_window(window: int | None, causal: bool) -> int | None:
    """The kernels' window (visible: ``i - j < w``, or ``|i - j| < w`` bidirectional) for a model's
    ``sliding_window``: transformers masks ``i - j < w`` when causal but ``|i - j| <= w`` when not."""
    if window is None or causal:
        return window
    return int(window) + 1


def base_model_of(model: torch.nn.Module) -> torch.nn.Module:
    """The base model (``model.model`` for a ``*ForCausalLM``): the LM head never runs."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"expected a transformers PreTrainedModel, got {type(model).__name__}")
    return model.base_model


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention module of each layer, in layer order (``layer_idx`` 0..depth-1)."""
    base = base_model_of(model)
    depth = int(getattr(base.config, "num_hidden_layers", 0) or 0)
    found: dict[int, torch.nn.Module] = {}
    for m in base.modules():
        if hasattr(m, "is_causal") and hasattr(m, "scaling") and isinstance(getattr(m, "layer_idx", None), int):
            if m.layer_idx in found:
                raise _unsupported(model, f"two attention modules claim layer {m.layer_idx}")
            found[m.layer_idx] = m
    if depth < 1 or sorted(found) != list(range(depth)):
        raise _unsupported(model, f"could not find one attention module per layer "
                                  f"(found layers {sorted(found)[:8]}, config says {depth})")
    return [found[i] for i in range(depth)]


def is_causal_model(model: torch.nn.Module) -> bool:
    """Whether the model's self-attention is causal (decoders) or bidirectional (BERT)."""
    mods = attention_modules(model)
    flags = {bool(m.is_causal) for m in mods}
    if len(flags) != 1:
        raise _unsupported(model, "its layers mix causal and bidirectional attention")
    return flags.pop() and bool(getattr(base_model_of(model).config, "is_causal", True))


def check_capturable(model: torch.nn.Module) -> None:
    """Refuse, with the model class and the fallback flag, what the capture cannot do."""
    base = base_model_of(model)
    cfg = base.config
    if getattr(cfg, "attn_logit_softcapping", None) is not None:
        raise _unsupported(model, f"attention logit softcapping (attn_logit_softcapping="
                                  f"{cfg.attn_logit_softcapping}) is not supported by the saliency kernels")
    if not getattr(base, "_supports_attention_backend", False):
        raise _unsupported(model, "it does not support transformers' AttentionInterface "
                                  "(_supports_attention_backend is False)")
    attention_modules(model)


def resolve_layers(model: torch.nn.Module, layers: int) -> tuple[int, ...]:
    """The last ``layers`` layer indices, clipped to the model's depth."""
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers (L) must be a positive int, got {layers!r}")
    depth = len(attention_modules(model))
    return tuple(range(max(0, depth - layers), depth))


@contextlib.contextmanager
def capturing(model: torch.nn.Module, *, layers: int = 6, backend: str = "auto", lse: str = "auto",
              stats_fn: StatsFn = default_stats_fn) -> Iterator[CaptureSession]:
    """Switch ``model`` to the capture attention (SDPA + saliency in its last ``layers``) and
    back, even on error. Yields the :class:`CaptureSession` the tagged layers report to; call
    ``session.begin(packed_layout(mask))`` before each forward."""
    if lse not in LSE_MODES:
        raise ValueError(f"lse must be one of {LSE_MODES}, got {lse!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_capturable(model)
    register()
    mods = attention_modules(model)
    causal = is_causal_model(model)
    session = CaptureSession(layer_indices=resolve_layers(model, layers), backend=backend, lse=lse,
                             stats_fn=stats_fn)
    for i in session.layer_indices:
        if getattr(mods[i], _SLOT_ATTR, None) is not None:
            raise RuntimeError(f"{type(model).__name__} is already being captured (not re-entrant)")
    previous = model.config._attn_implementation
    tagged = []
    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
        if base_model_of(model).config._attn_implementation != ATTN_IMPLEMENTATION:
            raise _unsupported(model, "it refused set_attn_implementation")
        for i in session.layer_indices:
            setattr(mods[i], _SLOT_ATTR, LayerCapture(session, i, causal))
            tagged.append(mods[i])
        yield session
    finally:
        for m in tagged:
            delattr(m, _SLOT_ATTR)
        session.layout = None
        session._float_masks.clear()
        if model.config._attn_implementation != previous:
            model.set_attn_implementation(previous)
