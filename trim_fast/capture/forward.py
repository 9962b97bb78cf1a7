"""The one forward loop every stage uses: a :class:`~trim_fast.batching.TokenChunk` in, per-batch
hidden states (pool scoring, the mean state, the evaluation's embeddings, the dry run) or
captured saliency + hidden states (fingerprints) out, with the :class:`ForwardCache`.

The hidden-states-only forwards carry exact levers (docs/SPEC.md section 3.1), on by default:

- **shared prefix**: the longest common prefix of the chunk's token ids (the chat template's
  system prompt and first role header, usually) is forwarded once, per loop and per device, and
  cached by its ids; each batch forwards only the suffixes against its keys and values (a
  ``DynamicCache`` expanded to the batch, positions continuing after the prefix). Causal models
  without a sliding window only; otherwise the loop falls back to the full forward and says why
  in :attr:`ForwardLoop.prefix_fallback`.
- **tails cut**: each example stops at its last counted token (its whole length when it has
  none), since under causal attention later tokens cannot change earlier states.
- **re-batching**: batches are formed by the remaining (suffix) lengths, so padding follows the
  work actually left.

Saliency capture (fingerprints) always forwards whole examples: a target's saliency needs its
full attention, prefix included, and targets are few.
"""
from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from trim_fast.batching import TokenChunk, token_budget_batches
from trim_fast.capture import capture_eager, capture_saliency
from trim_fast.capture.attention import base_model_of, is_causal_model
from trim_fast.digests import batch_key

logger = logging.getLogger(__name__)

LAST = -1  # the last layer's states, after the final norm


class ForwardCache:
    """Hidden states of forward batches, kept in memory (CPU) by the batch's exact token ids, so
    scoring one pool again (other banks or pooling settings, as the evaluation's variants do)
    skips the forward and gives the same numbers bit for bit. For pools that fit in memory. A
    cache belongs to the weights it was filled with: :meth:`bind` refuses other weights."""

    def __init__(self) -> None:
        self._hidden: dict[bytes, object] = {}
        self.weights: str | None = None

    def __len__(self) -> int:
        return len(self._hidden)

    def bind(self, identity: str) -> None:
        """Tie the cache to one model's weights, dtype and device type (on first use); refuse
        any other."""
        if self.weights is None:
            self.weights = identity
        elif self.weights != identity:
            raise ValueError("this ForwardCache holds hidden states of other weights or another "
                             f"dtype (weights digest, dtype, device: {self.weights}; this model: "
                             f"{identity}); use a new one")

    def hidden(self, ids: torch.Tensor, compute: Callable[[], object], tag: bytes = b""):
        """``compute()`` (a tensor or a dict of tensors) for the batch ``ids``, from memory when
        this batch (and ``tag``: what else the states depend on) was computed before."""
        key = batch_key(ids.cpu().numpy().tobytes(), tuple(ids.shape), tag)
        if key not in self._hidden:
            value = compute()
            self._hidden[key] = {k: v.cpu() for k, v in value.items()} \
                if isinstance(value, dict) else value.cpu()
        value = self._hidden[key]
        if isinstance(value, dict):
            return {k: v.to(ids.device) for k, v in value.items()}
        return value.to(ids.device)


@dataclass
class HiddenBatch:
    """One forward batch: ``index`` the chunk's example indices of its rows; ``ids``, ``mask``,
    ``counted`` ``[B, N]`` right-padded (tails cut: ``N`` may be shorter than the examples);
    ``states`` ``{layer: [B, N, d]}`` (``-1``: the last layer after the final norm)."""

    index: list[int]
    ids: torch.Tensor
    mask: torch.Tensor
    counted: torch.Tensor
    states: dict[int, torch.Tensor]

    @property
    def hidden(self) -> torch.Tensor:
        """The states of the first requested layer."""
        return next(iter(self.states.values()))


@dataclass
class LoopStats:
    """What the loop forwarded: real tokens, padded batch slots, tokens the levers skipped."""

    examples: int = 0
    tokens: int = 0  # tokens of the examples as given
    forwarded: int = 0  # real tokens forwarded (suffixes + each distinct prefix once)
    padded: int = 0  # B x N slots of the forward batches
    prefix_tokens: int = 0  # tokens covered by a shared prefix (all examples)
    tail_tokens: int = 0  # tokens after the last counted token, not forwarded
    batches: int = 0
    prefix_fallback: str | None = None

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["padding_waste"] = round(1 - self.forwarded / self.padded, 4) if self.padded else 0.0
        d["prefix_share"] = round(self.prefix_tokens / self.tokens, 4) if self.tokens else 0.0
        return d


def shared_prefix_length(chunk: TokenChunk) -> int:
    """The length of the longest prefix of token ids every example of ``chunk`` starts with
    (the whole example for a chunk of one; 0 for an empty chunk)."""
    if len(chunk) == 0:
        return 0
    limit = int((chunk.offsets[1:] - chunk.offsets[:-1]).min())
    if limit == 0:
        return 0
    heads = chunk.ids[chunk.offsets[:-1, None] + torch.arange(limit)]  # [n, limit]
    differ = (~(heads == heads[0]).all(dim=0)).nonzero()
    return int(differ[0]) if differ.numel() else limit


def needed_lengths(chunk: TokenChunk) -> list[int]:
    """Per example, the tokens a hidden-states forward needs: up to its last counted token, or
    the whole example when none of its tokens counts (embeddings then average all of them)."""
    lengths = chunk.offsets[1:] - chunk.offsets[:-1]
    example = chunk.example_of_token()
    position = torch.arange(chunk.ids.numel()) - chunk.offsets[:-1][example]
    last = torch.full((len(chunk),), -1, dtype=torch.long).scatter_reduce(
        0, example[chunk.counted], position[chunk.counted], "amax")
    return torch.where(last >= 0, last + 1, lengths).tolist()


def decoder_layers(base) -> torch.nn.ModuleList:
    """The base model's list of transformer blocks (``layers``, ``h``, ``encoder.layer``...)."""
    depth = base.config.num_hidden_layers
    for _, module in base.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == depth:
            return module
    raise ValueError(f"{type(base).__name__}: no list of {depth} transformer blocks found")


def check_hidden_layer(base, layer: int | None) -> int:
    """``layer`` as a key of :attr:`HiddenBatch.states`: ``-1`` for None or the last layer,
    else ``1 <= layer < depth`` (the output of block ``layer``, before the final norm)."""
    depth = base.config.num_hidden_layers
    if layer is None or layer in (-1, depth):
        return LAST
    if not isinstance(layer, int) or not 1 <= layer < depth:
        raise ValueError(f"hidden_layer must be in 1..{depth} for this {depth}-layer model "
                         f"(or None: the last), got {layer!r}")
    return layer


class _Stop(Exception):
    pass


class _Tap:
    """Forward hooks that keep the outputs of some blocks and, when the last layer's states are
    not needed, stop the forward after the deepest of them (early exit)."""

    def __init__(self, base, layers: tuple[int, ...]):
        self.want = [l for l in layers if l != LAST]
        self.stop_at = None if LAST in layers or not self.want else max(self.want)
        self.blocks = decoder_layers(base) if self.want else None
        self.out: dict[int, torch.Tensor] = {}
        self.handles = []

    def __enter__(self):
        for layer in self.want:
            self.handles.append(self.blocks[layer - 1].register_forward_hook(self._hook(layer)))
        return self

    def _hook(self, layer: int):
        def hook(module, args, output):
            self.out[layer] = output[0] if isinstance(output, tuple) else output
            if layer == self.stop_at:
                raise _Stop
        return hook

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return exc[0] is _Stop


def _prefix_support(base) -> str | None:
    """Why the shared-prefix lever cannot run on ``base`` (None: it can)."""
    if not is_causal_model(base):
        return "bidirectional attention"
    cfg = base.config
    window = getattr(cfg, "sliding_window", None)
    if window is not None and getattr(cfg, "use_sliding_window", True):
        return f"sliding-window attention ({window})"
    if any("sliding" in str(t) for t in getattr(cfg, "layer_types", None) or ()):
        return "sliding-window layers"
    if _cache_argument(base) is None:
        return f"{type(base).__name__}.forward takes no key/value cache"
    return None


def _cache_argument(base) -> str | None:
    """The name the forward takes its key/value cache by (transformers 5.x: ``cache``)."""
    params = inspect.signature(base.forward).parameters
    return next((n for n in ("cache", "past_key_values") if n in params), None)


@dataclass
class _Prefix:
    ids: torch.Tensor
    kv: list = field(default_factory=list)  # per layer (keys, values) [1, H, P, D]
    states: dict = field(default_factory=dict)  # {layer: [1, P, d]}


class ForwardLoop:
    """Batches of a chunk through the base transformer ``base`` (eval mode), hidden states or
    saliency out. ``layers``: the hidden states kept (``-1``/None the last after the final norm,
    ``l`` the output of block ``l``; the forward stops after the deepest one when the last is
    not wanted). ``shared_prefix`` / ``cut_tails``: the exact levers (module docstring); off,
    the batches are today's: whole examples, length-sorted under ``max_tokens``."""

    PREFIX_CACHE = 4  # distinct prefixes kept (one per pool, usually)
    # tight re-batching (a batch of >= N tokens ends before a much shorter example), per device
    # type; off: measured slower on the shared 2-core CPU (bench/RESULTS.md, issue 19)
    TIGHT_FROM: dict[str, int] = {}

    def __init__(self, base, *, pad_id: int, max_tokens: int, layers=(None,),
                 shared_prefix: bool = True, cut_tails: bool = True,
                 forward_cache: ForwardCache | None = None):
        self.base = base_model_of(base)
        self.pad_id = pad_id
        self.max_tokens = max_tokens
        self.layers = tuple(dict.fromkeys(check_hidden_layer(self.base, l) for l in layers))
        self.cut_tails = cut_tails and is_causal_model(self.base)
        self.prefix_fallback = _prefix_support(self.base) if shared_prefix else "off"
        if shared_prefix and self.prefix_fallback:
            logger.info("shared prefix not used: %s; whole examples are forwarded",
                        self.prefix_fallback)
        self.forward_cache = forward_cache
        self.tight_from = self.TIGHT_FROM.get(self.device.type)
        self.stats = LoopStats(prefix_fallback=self.prefix_fallback)
        self._prefixes: OrderedDict[bytes, _Prefix] = OrderedDict()
        self._tag = repr((self.layers,)).encode()

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    # -- hidden states ----------------------------------------------------------------------
    def hidden_batches(self, chunk: TokenChunk) -> Iterator[HiddenBatch]:
        """The chunk's batches with their hidden states; every example appears once."""
        n = len(chunk)
        full = chunk.lengths()
        need = needed_lengths(chunk) if self.cut_tails else full
        p = shared_prefix_length(chunk) if self.prefix_fallback is None else 0
        st = self.stats
        st.examples += n
        st.tokens += sum(full)
        st.tail_tokens += sum(full) - sum(need)
        st.prefix_tokens += p * n
        prefix = self._prefix(chunk.example(0)[0][:p]) if p else None
        tight = self.tight_from if (self.cut_tails or p) else None  # levers off: today's batches
        need_t = torch.tensor(need, dtype=torch.long)
        for batch in token_budget_batches([max(0, k - p) for k in need], self.max_tokens,
                                          tight_from=tight):
            ids, mask, counted = chunk.padded(batch, self.pad_id, self.device, lengths=need_t)
            mask = mask.bool()
            st.batches += 1
            if prefix is None:
                compute = lambda ids=ids, mask=mask: self._forward(ids, mask)  # noqa: E731
            else:
                compute = lambda ids=ids, mask=mask: self._forward_suffix(prefix, ids, mask)  # noqa: E731
            suffix = max(0, ids.shape[1] - p)
            if self.forward_cache is None:
                states = compute()
            else:
                states = self.forward_cache.hidden(ids, compute, self._tag)
            # counted from the host-side lengths: no device sync between batches
            if prefix is None:
                st.forwarded += sum(need[i] for i in batch)
                st.padded += mask.numel()
            elif suffix:
                st.forwarded += sum(max(0, need[i] - p) for i in batch)
                st.padded += len(batch) * suffix
            yield HiddenBatch(batch, ids, mask, counted, states)

    def _forward(self, ids, mask) -> dict[int, torch.Tensor]:
        position_ids = (mask.long().cumsum(-1) - 1).clamp_min(0)
        with torch.inference_mode(), _Tap(self.base, self.layers) as tap:
            out = self.base(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids,
                            use_cache=False, return_dict=True)
            tap.out[LAST] = out.last_hidden_state
        return {l: tap.out[l] for l in self.layers}

    def _prefix(self, ids: torch.Tensor) -> _Prefix:
        """The prefix's keys, values and states, computed once per loop (by its ids)."""
        key = ids.numpy().tobytes()
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
            return self._prefixes[key]
        from transformers import DynamicCache

        cache = DynamicCache(config=self.base.config)
        dev_ids = ids[None].to(self.device)
        with torch.inference_mode(), _Tap(self.base, self.layers) as tap:
            out = self.base(input_ids=dev_ids, **{_cache_argument(self.base): cache}, use_cache=True,
                            position_ids=torch.arange(ids.numel(), device=self.device)[None],
                            return_dict=True)
            tap.out[LAST] = out.last_hidden_state
        kv = [(layer.keys, layer.values) for layer in cache.layers if layer.is_initialized]
        prefix = _Prefix(ids, kv, {l: tap.out[l] for l in self.layers})
        self.stats.forwarded += ids.numel()
        self._prefixes[key] = prefix
        while len(self._prefixes) > self.PREFIX_CACHE:
            self._prefixes.popitem(last=False)
        return prefix

    def _forward_suffix(self, prefix: _Prefix, ids, mask) -> dict[int, torch.Tensor]:
        """States of the batch ``ids`` (each row prefix + suffix, right-padded) from a forward
        of the suffixes alone against the prefix's keys and values."""
        from transformers import DynamicCache

        p = prefix.ids.numel()
        b, n = ids.shape
        states = {l: s.expand(b, -1, -1) for l, s in prefix.states.items()}
        if n <= p:  # every row ends inside the prefix
            return {l: s[:, :n].contiguous() for l, s in states.items()}
        cache = DynamicCache(config=self.base.config)
        for layer, (k, v) in zip(cache.layers, prefix.kv):
            layer.update(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1))
        # rows that end inside the prefix still see it: their suffix queries are padding
        full_mask = torch.cat([torch.ones(b, p, dtype=torch.long, device=ids.device),
                               mask[:, p:].long()], dim=1)
        position_ids = torch.arange(p, n, device=ids.device)[None].expand(b, -1)
        with torch.inference_mode(), _Tap(self.base, self.layers) as tap:
            out = self.base(input_ids=ids[:, p:], attention_mask=full_mask,
                            **{_cache_argument(self.base): cache}, position_ids=position_ids,
                            use_cache=True, return_dict=True)
            tap.out[LAST] = out.last_hidden_state
        return {l: torch.cat([states[l], tap.out[l].to(states[l].dtype)], dim=1)
                for l in self.layers}

    # -- saliency capture (fingerprints) ----------------------------------------------------
    def capture_batches(self, chunk: TokenChunk, *, layers: int, w_row: float, w_col: float,
                        saliency: str = "auto", hidden_layer: int | None = None):
        """``(batch, ids, mask, counted, CaptureResult)`` per batch of whole examples (no
        levers: saliency needs each target's full attention). ``hidden_layer``: the result's
        ``hidden`` is that block's output (the layer the pool is scored at)."""
        kw = dict(layers=layers, w_row=w_row, w_col=w_col,
                  hidden_layer=check_hidden_layer(self.base, hidden_layer))
        for batch in chunk.batches(self.max_tokens):
            ids, mask, counted = chunk.padded(batch, self.pad_id, self.device)
            if saliency == "eager":
                cap = capture_eager(self.base, ids, mask, **kw)
            else:
                cap = capture_saliency(self.base, ids, mask, backend=saliency, **kw)
            self.stats.batches += 1
            self.stats.forwarded += int(mask.sum())
            self.stats.padded += mask.numel()
            yield batch, ids, mask, counted, cap


def loop_for(base, cfg, *, pad_id: int, forward_cache: ForwardCache | None = None,
             layers=None) -> ForwardLoop:
    """The loop a :class:`~trim_fast.config.SelectionConfig` asks for (its batch budget, levers
    and hidden layer)."""
    return ForwardLoop(base, pad_id=pad_id, max_tokens=cfg.max_tokens,
                       layers=layers if layers is not None else (cfg.hidden_layer,),
                       shared_prefix=cfg.shared_prefix, cut_tails=cfg.cut_tails,
                       forward_cache=forward_cache)


__all__ = ["ForwardCache", "ForwardLoop", "HiddenBatch", "LoopStats", "LAST", "loop_for",
           "shared_prefix_length", "needed_lengths", "decoder_layers", "check_hidden_layer"]
