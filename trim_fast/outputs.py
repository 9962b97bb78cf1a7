"""Writing a run's outputs atomically (temp file + rename): the coreset in its input format and
in score order, the score table (Parquet and CSV), ``summary.json`` and ``report.png``."""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from typing import Sequence

from trim_fast.data import Example
from trim_fast.io import atomic_open


def ensure_out_dir(path: str) -> str:
    """Create ``--out`` and check it is writable before any long stage runs."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise OSError(f"--out {path}: not writable ({exc.strerror or exc})") from exc
    return path


def _clean(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None if math.isnan(v) else ("-inf" if v < 0 else "inf")
    return v


def score_columns(scored, combined, selected: Sequence[int]) -> dict[str, list]:
    """The score table as columns, one row per pool example, sorted by score (ties: lower pool
    index first). The parts shown are those of the task whose bank gave the best score."""
    import torch

    p = len(scored.ids)
    order = sorted(range(p), key=lambda i: (-_finite_or_neg_inf(float(combined[i])), i))
    best_task = scored.score.nan_to_num(nan=float("-inf")).argmax(0)
    pick = torch.arange(p)
    chosen = torch.zeros(p, dtype=torch.bool)
    chosen[list(selected)] = True
    per_example = {
        "id": scored.ids, "source": scored.sources, "line": scored.lines, "family": scored.families,
        "score": combined.tolist(),
        "mean": scored.mean[best_task, pick].tolist(), "max": scored.max[best_task, pick].tolist(),
        "coverage": scored.coverage[best_task, pick].tolist(),
        "n_tokens": scored.n_tokens.tolist(), "n_counted": scored.n_counted.tolist(),
        "n_scored": scored.n_scored[best_task, pick].tolist(),
        "n_matched": scored.n_matched[best_task, pick].tolist(),
        "truncated": scored.truncated.tolist(), "selected": chosen.tolist(),
    }
    if len(scored.tasks) > 1:
        for t, task in enumerate(scored.tasks):
            per_example[f"score[{task}]"] = scored.score[t].tolist()
    cols = {"rank": list(range(1, p + 1))}
    for name, values in per_example.items():
        cols[name] = [values[i] for i in order]
    return cols


def _finite_or_neg_inf(x: float) -> float:
    return float("-inf") if x != x else x


def write_table(cols: dict[str, list], out_dir: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not cols["rank"]:
        raise ValueError("no rows to write: the pool is empty")
    table = pa.table(cols)
    with atomic_open(os.path.join(out_dir, "scores.parquet"), "wb") as f:
        pq.write_table(table, f)
    with atomic_open(os.path.join(out_dir, "sorted.csv")) as f:
        w = csv.writer(f)
        names = list(cols)
        w.writerow(names)
        for row in zip(*(cols[c] for c in names)):
            w.writerow([_clean(v) for v in row])


def write_coreset(selected: Sequence[Example], path: str) -> None:
    """The selected records unchanged, in the order given (score order), one JSON object a line
    (JSONL whatever the source file was: LESS-style trainers read JSONL; values JSON lacks, such
    as a Parquet timestamp, are written as their string)."""
    with atomic_open(path) as f:
        for ex in selected:
            f.write(json.dumps(ex.raw, ensure_ascii=False, default=str) + "\n")


def _json_safe(obj):
    """NaN -> null and +-inf -> "inf"/"-inf" anywhere in a nested object (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return _clean(obj)


def write_json(obj: dict, path: str) -> None:
    with atomic_open(path) as f:
        json.dump(_json_safe(obj), f, indent=2, default=str, allow_nan=False)
        f.write("\n")


def _bins(values: list, n: int = 40) -> list[float]:
    """Shared bin edges, so pool and selection histograms line up."""
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def write_report(cols: dict[str, list], path: str, title: str = "trim-fast selection",
                 loss_curves: dict | None = None) -> None:
    """Score distribution, token lengths of pool vs selection, and each source's share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [dict(zip(cols, values)) for values in zip(*cols.values())]
    finite = [r for r in rows if math.isfinite(r["score"])]
    chosen = [r for r in rows if r["selected"]]
    n_panels = 4 if loss_curves else 3
    fig, ax = plt.subplots(1, n_panels, figsize=(5 * n_panels, 4))
    score_bins = _bins([r["score"] for r in finite])
    ax[0].hist([r["score"] for r in finite], bins=score_bins, color="#999", label="pool")
    ax[0].hist([r["score"] for r in chosen if math.isfinite(r["score"])], bins=score_bins,
               color="#d62", label="selected")
    ax[0].set(title="score distribution", xlabel="score S", ylabel="examples")
    ax[0].legend()
    length_bins = _bins([r["n_tokens"] for r in rows])
    ax[1].hist([r["n_tokens"] for r in rows], bins=length_bins, color="#999", density=True,
               label="pool")
    ax[1].hist([r["n_tokens"] for r in chosen], bins=length_bins, color="#d62", alpha=0.7,
               density=True, label="selected")
    ax[1].set(title="length (tokens)", xlabel="tokens", ylabel="density")
    ax[1].legend()
    sources = sorted({r["source"] for r in rows})
    pool_share = [sum(r["source"] == s for r in rows) / len(rows) for s in sources]
    sel_share = [sum(r["source"] == s for r in chosen) / max(1, len(chosen)) for s in sources]
    x = range(len(sources))
    ax[2].bar([i - 0.2 for i in x], pool_share, 0.4, color="#999", label="pool")
    ax[2].bar([i + 0.2 for i in x], sel_share, 0.4, color="#d62", label="selected")
    ax[2].set_xticks(list(x), [os.path.basename(s) for s in sources], rotation=20, ha="right")
    ax[2].set(title="share of each source file", ylabel="share")
    ax[2].legend()
    if loss_curves:
        for name, curve in loss_curves.items():
            ax[3].plot(range(1, len(curve) + 1), curve, label=name)
        ax[3].set(title="warmup loss", xlabel="step", ylabel="loss")
        ax[3].legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
