"""Target examples -> one fingerprint bank (SPEC 1-2), with the model's own forward: saliency is
captured inside its attention (or, with ``saliency="eager"``, from materialised attention), and
counted tokens are accumulated per token id batch by batch."""
from __future__ import annotations

from typing import Sequence

import torch

from trim_fast.bank import FingerprintAccumulator, FingerprintBank
from trim_fast.batching import TokenChunk, pad_batch
from trim_fast.capture import capture_eager, capture_saliency, encode_last_hidden
from trim_fast.config import SelectionConfig
from trim_fast.progress import Progress


def fingerprint_tokens(model, chunk: TokenChunk, cfg: SelectionConfig, *, pad_id: int,
                       meta: dict, center: torch.Tensor | None = None,
                       progress: bool = False) -> FingerprintBank:
    """One bank from the tokenised targets of one task (``chunk``). ``model`` is the base
    transformer, in eval mode; ``center``: the mean state subtracted from every hidden state
    first (``cfg.center == "pool"``)."""
    if len(chunk) == 0:
        raise ValueError("empty target set: a task needs at least one target example")
    if not bool(chunk.counted.any()):
        raise ValueError(f"the target set has no counted tokens under scope={cfg.scope!r}")
    device = next(model.parameters()).device
    acc = None
    kw = dict(layers=cfg.layers, w_row=cfg.w_row, w_col=cfg.w_col)
    with Progress(int(chunk.ids.numel()), "fingerprinting", progress) as bar:
        for batch in chunk.batches(cfg.max_tokens):
            ids, mask, counted = pad_batch([chunk.example(i) for i in batch], pad_id, device)
            if cfg.saliency == "eager":
                cap = capture_eager(model, ids, mask, **kw)
            else:
                cap = capture_saliency(model, ids, mask, backend=cfg.saliency, **kw)
            if acc is None:
                acc = FingerprintAccumulator(cap.hidden.shape[-1])
            hidden = cap.hidden[counted]
            if center is not None:
                hidden = hidden.float() - center.to(hidden.device)
            acc.add(hidden, ids[counted], cap.alpha[counted])
            bar.update(int(mask.sum()))
    return acc.finish(dict(meta, settings=cfg.bank_settings()), center=center)


def mean_state(model, chunk: TokenChunk, cfg: SelectionConfig, *, pad_id: int,
               forward_cache=None) -> torch.Tensor:
    """``[d]`` fp32: the mean last hidden state of the counted tokens of ``chunk`` (accumulated in
    float64), the center of ``cfg.center == "pool"``. ``forward_cache``: a
    :class:`trim_fast.scoring.engine.ForwardCache` to take the forward passes from."""
    device = next(model.parameters()).device
    total, count = None, 0
    for batch in chunk.batches(cfg.max_tokens):
        ids, mask, counted = pad_batch([chunk.example(i) for i in batch], pad_id, device)
        if forward_cache is None:
            hidden = encode_last_hidden(model, ids, mask)
        else:
            hidden = forward_cache.hidden(ids, lambda: encode_last_hidden(model, ids, mask))
        hidden = hidden[counted].double()
        total = hidden.sum(0) if total is None else total + hidden.sum(0)
        count += hidden.shape[0]
    if not count:
        raise ValueError("the pool sample has no counted token to take a mean state from")
    return (total / count).float().cpu()


def target_family(labels: Sequence) -> str | None:
    """The ``family`` label most targets of a task share, if they carry one (for reports)."""
    from collections import Counter

    counts = Counter(x for x in labels if x is not None)
    return counts.most_common(1)[0][0] if counts else None


__all__ = ["fingerprint_tokens", "mean_state", "target_family"]
