"""Target examples -> one fingerprint bank (SPEC 1-2), with the model's own forward: saliency is
captured inside its attention (or, with ``saliency="eager"``, from materialised attention), and
counted tokens are accumulated per token id batch by batch."""
from __future__ import annotations

from typing import Sequence

import torch

from trim_fast.bank import FingerprintAccumulator, FingerprintBank
from trim_fast.batching import TokenChunk
from trim_fast.capture.forward import ForwardLoop, loop_for
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
    acc = None
    loop = ForwardLoop(model, pad_id=pad_id, max_tokens=cfg.max_tokens)
    batches = loop.capture_batches(chunk, layers=cfg.layers, w_row=cfg.w_row, w_col=cfg.w_col,
                                   saliency=cfg.saliency, hidden_layer=cfg.hidden_layer)
    with Progress(int(chunk.ids.numel()), "fingerprinting", progress) as bar:
        for _, ids, mask, counted, cap in batches:
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
    """``[d]`` fp32: the mean hidden state (at ``cfg.hidden_layer``) of the counted tokens of ``chunk`` (accumulated in
    float64), the center of ``cfg.center == "pool"``. ``forward_cache``: a
    :class:`trim_fast.scoring.engine.ForwardCache` to take the forward passes from."""
    total, count = None, 0
    for hb in loop_for(model, cfg, pad_id=pad_id, forward_cache=forward_cache).hidden_batches(chunk):
        hidden = hb.hidden[hb.counted].double()
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
