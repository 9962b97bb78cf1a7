"""Target examples -> one fingerprint bank (SPEC 1-2), with the model's own forward: saliency is
captured inside its attention (or, with ``saliency="eager"``, from materialised attention), and
counted tokens are accumulated per token id batch by batch."""
from __future__ import annotations

from typing import Sequence


from trim_fast.bank import FingerprintAccumulator, FingerprintBank
from trim_fast.batching import TokenChunk, pad_batch
from trim_fast.capture import capture_eager, capture_saliency
from trim_fast.config import SelectionConfig
from trim_fast.progress import Progress


def fingerprint_tokens(model, chunk: TokenChunk, cfg: SelectionConfig, *, pad_id: int,
                       meta: dict, progress: bool = False) -> FingerprintBank:
    """One bank from the tokenised targets of one task (``chunk``). ``model`` is the base
    transformer, in eval mode."""
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
            acc.add(cap.hidden[counted], ids[counted], cap.alpha[counted])
            bar.update(int(mask.sum()))
    return acc.finish(dict(meta, settings=cfg.bank_settings()))


def target_family(labels: Sequence) -> str | None:
    """The ``family`` label most targets of a task share, if they carry one (for reports)."""
    from collections import Counter

    counts = Counter(x for x in labels if x is not None)
    return counts.most_common(1)[0][0] if counts else None


__all__ = ["fingerprint_tokens", "target_family"]
