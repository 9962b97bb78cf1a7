"""Token saliency and last hidden states from one forward pass of an HF model (SPEC 1-3).

- :func:`capture_saliency`: the model stays on SDPA; its last ``L`` layers also compute the
  saliency statistics inside the attention call (O(n) per layer, no ``n x n`` matrix), and the
  base model's ``last_hidden_state`` comes back. The LM head never runs.
- :func:`capture_eager`: its naive twin, the eager ``output_attentions=True`` path
  (``--saliency eager``), alpha from :func:`trim_fast.reference.token_saliency_from_probs`.
- :func:`encode_last_hidden`: the pool-scoring forward, hidden states only.

Padding: left or right (one contiguous run of ones per row of ``attention_mask``). Position ids
count from each example's first valid token, so an example's results do not depend on the
padding side or on what it is batched with; padding never counts (alpha 0 there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trim_fast.capture.attention import (
    ATTN_IMPLEMENTATION,
    FALLBACK_FLAG,
    CaptureSession,
    CaptureUnsupportedError,
    PackedLayout,
    attention_modules,
    base_model_of,
    capturing,
    check_capturable,
    default_stats_fn,
    is_causal_model,
    kernel_window,
    packed_layout,
    resolve_layers,
)
from trim_fast.reference import token_saliency_from_probs, visibility_mask
from trim_fast.saliency import token_saliency
from trim_fast.types import SaliencyStats


@dataclass
class CaptureResult:
    """Per batch. ``hidden`` ``[B, N, d]`` (model dtype; the last layer after the final norm),
    ``alpha``/``row``/``col`` ``[B, N]`` fp32 (``alpha = w_row * row + w_col * col``; 0 at
    padding), ``input_ids`` and ``attention_mask`` (bool) as given, ``layers_used`` the layer
    indices whose attention entered alpha. ``layer_stats``: the raw per-layer statistics in
    packed varlen layout (``cu_seqlens``), or ``None`` from the eager path."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    hidden: torch.Tensor
    alpha: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    layers_used: tuple[int, ...]
    layer_stats: list[SaliencyStats] | None = None
    cu_seqlens: torch.Tensor | None = None


def _prepare(model, input_ids, attention_mask):
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        raise ValueError(f"input_ids must be a [B, N] tensor, got "
                         f"{getattr(input_ids, 'shape', type(input_ids).__name__)}")
    if input_ids.is_floating_point():
        raise TypeError(f"input_ids must be integer token ids, got {input_ids.dtype}")
    base = base_model_of(model)
    device = next(base.parameters()).device
    input_ids = input_ids.to(device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} and input_ids "
                         f"{tuple(input_ids.shape)} differ in shape")
    layout = packed_layout(attention_mask.to(device))
    return base, input_ids, layout


def _base_forward(base, input_ids, layout: PackedLayout, **kwargs):
    return base(input_ids=input_ids, attention_mask=layout.valid.long(),
                position_ids=layout.position_ids(), use_cache=False, return_dict=True, **kwargs)


def _states_kw(hidden_layer: int) -> dict:
    return {} if hidden_layer == -1 else {"output_hidden_states": True}


def _states(out, hidden_layer: int) -> torch.Tensor:
    """The last hidden state (``-1``) or block ``hidden_layer``'s output."""
    return out.last_hidden_state if hidden_layer == -1 else out.hidden_states[hidden_layer]


def _check_weights(w_row: float, w_col: float) -> None:
    for name, w in (("w_row", w_row), ("w_col", w_col)):
        if not isinstance(w, (int, float)) or w != w:
            raise ValueError(f"{name} must be a number, got {w!r}")


def capture_saliency(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    layers: int = 6,
    w_row: float = 0.5,
    w_col: float = 0.5,
    backend: str = "auto",
    lse: str = "auto",
    stats_fn=default_stats_fn,
    hidden_layer: int = -1,
) -> CaptureResult:
    """SPEC 1 alpha and SPEC 2 hidden states from one SDPA forward of the base model.

    ``layers``: ``L``, the last layers whose attention counts (clipped to depth). ``backend``:
    the :func:`trim_fast.ops.attention_saliency_varlen` backend. ``lse``: ``"auto"`` passes the
    row log-sum-exp of the attention forward to the saliency call where the attention kernel
    exposes it (CPU flash attention, any mask; CUDA flash attention, fp16/bf16 batches with no
    mask, spot-checked once per call, else plain SDPA); ``"off"`` never. ``stats_fn``: the
    saliency statistics call (default: the kernels), e.g. another kernel. ``hidden_layer``:
    ``hidden`` is the output of that block (``-1``: the last layer after the final norm), as
    pool scoring with an early exit reads it. Eval mode only.
    """
    _check_weights(w_row, w_col)
    base, input_ids, layout = _prepare(model, input_ids, attention_mask)
    with capturing(model, layers=layers, backend=backend, lse=lse, stats_fn=stats_fn) as session:
        session.begin(layout)
        with torch.inference_mode():
            out = _base_forward(base, input_ids, layout, **_states_kw(hidden_layer))
        stats = _collect(model, session)
    ts = token_saliency(stats, w_row=w_row, w_col=w_col)
    return CaptureResult(
        input_ids=input_ids, attention_mask=layout.valid, hidden=_states(out, hidden_layer),
        alpha=layout.unpack(ts.alpha), row=layout.unpack(ts.row), col=layout.unpack(ts.col),
        layers_used=session.layer_indices, layer_stats=stats, cu_seqlens=layout.cu_seqlens)


def _collect(model, session: CaptureSession) -> list[SaliencyStats]:
    missing = [i for i in session.layer_indices if i not in session.stats]
    if missing:
        raise CaptureUnsupportedError(
            f"{type(model).__name__}: layers {missing} never called the registered attention "
            f"function (custom attention code?); use the eager output_attentions path ({FALLBACK_FLAG})")
    stats = [session.stats[i] for i in session.layer_indices]
    first = stats[0]
    for i, st in zip(session.layer_indices, stats):
        if not torch.equal(st.row_visible, first.row_visible):
            raise CaptureUnsupportedError(
                f"{type(model).__name__}: captured layers {session.layer_indices} use different "
                f"attention windows ({ {j: session.windows[j] for j in session.layer_indices} }); "
                f"choose L so the last L layers share one window")
    return stats


def _layer_window(model, module) -> int | None:
    if hasattr(module, "sliding_window"):  # per layer (Qwen2's layer_types)
        return module.sliding_window
    return getattr(base_model_of(model).config, "sliding_window", None)


def model_visibility(layout: PackedLayout, *, causal: bool, window: int | None) -> torch.Tensor:
    """``[B, N, N]`` bool: what the model's own mask lets query ``i`` see, in padded coordinates
    (valid span x causal x the model's sliding window, see :func:`kernel_window`)."""
    allowed = visibility_mask(layout.seq_len, causal=causal, window=kernel_window(window, causal),
                              device=layout.valid.device)
    return allowed & layout.valid[:, :, None] & layout.valid[:, None, :]


def capture_eager(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    layers: int = 6,
    w_row: float = 0.5,
    w_col: float = 0.5,
    hidden_layer: int = -1,
) -> CaptureResult:
    """The naive twin (``--saliency eager``): eager attention with ``output_attentions``,
    alpha from the materialised probabilities of the last ``layers`` layers and the visibility
    the model's mask applies. The model's attention implementation is restored afterwards."""
    _check_weights(w_row, w_col)
    base, input_ids, layout = _prepare(model, input_ids, attention_mask)
    if getattr(base.config, "attn_logit_softcapping", None) is not None:
        raise CaptureUnsupportedError(
            f"{type(model).__name__}: attention logit softcapping is not supported")
    mods = attention_modules(model)
    used = resolve_layers(model, layers)
    causal = is_causal_model(model)
    windows = {i: _layer_window(model, mods[i]) for i in used}
    if len(set(windows.values())) != 1:
        raise CaptureUnsupportedError(
            f"{type(model).__name__}: captured layers use different attention windows {windows}; "
            f"choose L so the last L layers share one window")
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation("eager")
        with torch.inference_mode():
            out = _base_forward(base, input_ids, layout, output_attentions=True,
                                **_states_kw(hidden_layer))
    finally:
        if model.config._attn_implementation != previous:
            model.set_attn_implementation(previous)
    attentions = out.attentions
    if attentions is None or len(attentions) != len(mods):
        raise CaptureUnsupportedError(
            f"{type(model).__name__}: output_attentions returned "
            f"{None if attentions is None else len(attentions)} layers, expected {len(mods)}")
    visible = model_visibility(layout, causal=causal, window=windows[used[0]])
    ts = token_saliency_from_probs([attentions[i] for i in used], visible, w_row=w_row, w_col=w_col)
    return CaptureResult(
        input_ids=input_ids, attention_mask=layout.valid, hidden=_states(out, hidden_layer),
        alpha=ts.alpha, row=ts.row, col=ts.col, layers_used=used)


def encode_last_hidden(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B, N, d]`` last hidden states (after the final norm) for pool scoring: the base model
    only, with its current attention implementation; no LM head, no attention statistics, no
    extra hidden states, no cache. Load the model in bf16/fp16 on a GPU for speed."""
    base, input_ids, layout = _prepare(model, input_ids, attention_mask)
    with torch.inference_mode():
        return _base_forward(base, input_ids, layout).last_hidden_state


__all__ = [
    "ATTN_IMPLEMENTATION",
    "CaptureResult",
    "CaptureUnsupportedError",
    "capture_eager",
    "capture_saliency",
    "capturing",
    "check_capturable",
    "encode_last_hidden",
    "model_visibility",
    "packed_layout",
]
