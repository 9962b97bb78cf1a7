"""Writing a run's outputs atomically (temp file + rename): the coreset in its input format and
in score order, the score table (Parquet and CSV), ``summary.json`` and ``report.png``."""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import tempfile
from typing import Any, Iterator, Sequence

from trim_fast.data import Example, Tokenized

TABLE_COLUMNS = ("rank", "id", "source", "line", "family", "score", "mean", "max", "coverage",
                 "n_tokens", "n_counted", "n_scored", "n_matched", "truncated", "selected")


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[Any]:
    """Write to a temp file beside ``path`` and rename it in place only when the block succeeds."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-" + os.path.basename(path) + "-")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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


def score_rows(examples: Sequence[Example], tokenized: Sequence[Tokenized], scores, combined,
               selected: Sequence[int]) -> list[dict]:
    """One row per pool example, sorted by score (ties: lower pool index first)."""
    sel = set(selected)
    rows = []
    multi = len(scores.tasks) > 1
    best_task = scores.score.nan_to_num(nan=float("-inf")).argmax(0)
    for i, (ex, tok) in enumerate(zip(examples, tokenized)):
        t = int(best_task[i])  # the parts shown are those of the task that gave the score
        row = {
            "id": ex.id, "source": ex.source, "line": ex.line,
            "family": ex.meta.get("family", ex.meta.get("task")),
            "score": float(combined[i]), "mean": float(scores.mean[t, i]),
            "max": float(scores.max[t, i]), "coverage": float(scores.coverage[t, i]),
            "n_tokens": len(tok.ids), "n_counted": int(sum(tok.counted)),
            "n_scored": int(scores.n_scored[t, i]), "n_matched": int(scores.n_matched[t, i]),
            "truncated": tok.truncated, "selected": i in sel, "_index": i,
        }
        if multi:
            for ti, task in enumerate(scores.tasks):
                row[f"score[{task}]"] = float(scores.score[ti, i])
        rows.append(row)
    rows.sort(key=lambda r: (-(r["score"] if r["score"] == r["score"] else float("-inf")), r["_index"]))
    for rank, r in enumerate(rows, start=1):
        r["rank"] = rank
        r.pop("_index")
    return rows


def write_table(rows: list[dict], out_dir: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError("no rows to write: the pool is empty")
    columns = list(TABLE_COLUMNS) + [c for c in rows[0] if c not in TABLE_COLUMNS]
    table = pa.table({c: [r.get(c) for r in rows] for c in columns})
    with atomic_open(os.path.join(out_dir, "scores.parquet"), "wb") as f:
        pq.write_table(table, f)
    with atomic_open(os.path.join(out_dir, "sorted.csv")) as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([_clean(r.get(c)) for c in columns])


def write_coreset(examples: Sequence[Example], order: Sequence[int], path: str) -> None:
    """The selected records unchanged, in score order, one JSON object a line."""
    with atomic_open(path) as f:
        for i in order:
            f.write(json.dumps(examples[i].raw, ensure_ascii=False) + "\n")


def write_json(obj: dict, path: str) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, default=_clean, allow_nan=False)
        f.write("\n")


def write_report(rows: list[dict], path: str, title: str = "trim-fast selection",
                 loss_curves: dict | None = None) -> None:
    """Score distribution, token lengths of pool vs selection, and each source's share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [r for r in rows if r["score"] == r["score"] and r["score"] not in (float("inf"), float("-inf"))]
    chosen = [r for r in rows if r["selected"]]
    n_panels = 4 if loss_curves else 3
    fig, ax = plt.subplots(1, n_panels, figsize=(5 * n_panels, 4))
    ax[0].hist([r["score"] for r in finite], bins=40, color="#999", label="pool")
    ax[0].hist([r["score"] for r in chosen if r in finite], bins=40, color="#d62", label="selected")
    ax[0].set(title="score distribution", xlabel="score S", ylabel="examples")
    ax[0].legend()
    ax[1].hist([r["n_tokens"] for r in rows], bins=40, color="#999", density=True, label="pool")
    ax[1].hist([r["n_tokens"] for r in chosen], bins=40, color="#d62", alpha=0.7, density=True,
               label="selected")
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
