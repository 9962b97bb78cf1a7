"""The output files of a selection, each written atomically (temp file + rename): the coreset
(the selected records unchanged, best first: JSONL, Parquet or a ``datasets`` folder), the score
table (``scores.parquet`` and ``sorted.csv``, or LESS's ``sorted.csv``), ``summary.json`` and
``report.png``."""
from __future__ import annotations

import collections
import contextlib
import csv
import datetime
import decimal
import json
import logging
import math
import os
import shutil
import tempfile
from typing import Iterator, Sequence

from trim_fast.data import DataError, Example
from trim_fast.data.resolve import file_kind
from trim_fast.extras import require
from trim_fast.errors import ConfigError, RunDirectoryError
from trim_fast.run.files import atomic_open

logger = logging.getLogger("trim_fast")

OUTPUT_FORMATS = ("auto", "jsonl", "parquet", "hf")
LAYOUTS = ("trim", "less")


def ensure_out_dir(path: str) -> str:
    """Create ``--out`` and check it is writable before any long stage runs."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise RunDirectoryError(f"--out {path}: not writable ({exc.strerror or exc})") from exc
    return path


@contextlib.contextmanager
def staged(out_dir: str) -> Iterator[str]:
    """A folder inside ``out_dir`` to write a run's outputs into; when the block succeeds they
    are moved into ``out_dir`` together (one rename each), else removed: a run that fails while
    writing (disk full, a record that cannot be written) leaves ``out_dir`` as it was, never
    new outputs beside old ones."""
    stage = tempfile.mkdtemp(dir=out_dir, prefix=".staging-")
    try:
        yield stage
        _publish(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: str, out_dir: str) -> None:
    for name in sorted(os.listdir(stage)):
        src, dst = os.path.join(stage, name), os.path.join(out_dir, name)
        if os.path.isdir(src) and not _is_dataset_folder(src):
            os.makedirs(dst, exist_ok=True)  # a LESS task folder: its files replace theirs
            _publish(src, dst)
        elif os.path.isdir(dst):  # a datasets folder replaces the old one whole
            old = tempfile.mkdtemp(dir=out_dir, prefix=".old-")
            os.replace(dst, os.path.join(old, name))
            os.replace(src, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(src, dst)


def _is_dataset_folder(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json"))


def coreset_name(fraction: float | None, k: int | None, output_format: str, *,
                 layout: str = "trim") -> str:
    """LESS's name for a coreset, ``top_p0.05`` (or ``top_k{k}``; in the LESS layout
    ``top_num{k}``, as LESS names it), with the format's suffix."""
    stem = f"top_p{fraction:g}" if k is None else f"top_num{k}" if layout == "less" else f"top_k{k}"
    return stem + {"jsonl": ".jsonl", "parquet": ".parquet", "hf": ""}[output_format]


def resolve_output_format(output_format: str, examples_sources: Sequence[str]) -> str:
    """``auto``: Parquet when every pool source is a Parquet file (Parquet in, Parquet out),
    else JSONL."""
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"output format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    if output_format != "auto":
        return output_format
    parquet = [_is_parquet(s) for s in examples_sources]
    return "parquet" if parquet and all(parquet) else "jsonl"


def _clean(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None if math.isnan(v) else ("-inf" if v < 0 else "inf")
    return v


def score_columns(scores, combined, selected: Sequence[int],
                  digests: bytes | None = None) -> dict[str, list]:
    """The score table as columns, one row per pool example, sorted by score (ties: lower pool
    index first). The parts shown are those of the task whose bank gave the best score.
    ``digests``: the records' content digests (16 bytes each, pool order), kept in the
    ``digest`` column so that ``pick`` can check the pool still holds what was scored."""
    import torch

    p = len(scores.ids)
    order = sorted(range(p), key=lambda i: (-_finite_or_neg_inf(float(combined[i])), i))
    best_task = scores.score.nan_to_num(nan=float("-inf")).argmax(0)
    pick = torch.arange(p)
    chosen = torch.zeros(p, dtype=torch.bool)
    chosen[list(selected)] = True
    per_example = {
        "index": list(range(p)), "id": scores.ids, "source": scores.sources, "line": scores.lines,
        "family": scores.families, "score": combined.tolist(),
        "mean": scores.mean[best_task, pick].tolist(), "max": scores.max[best_task, pick].tolist(),
        "coverage": scores.coverage[best_task, pick].tolist(),
        "n_tokens": scores.n_tokens.tolist(), "n_counted": scores.n_counted.tolist(),
        "n_scored": scores.n_scored[best_task, pick].tolist(),
        "n_matched": scores.n_matched[best_task, pick].tolist(),
        "truncated": scores.truncated.tolist(), "selected": chosen.tolist(),
    }
    if digests is not None:
        per_example["digest"] = [digests[16 * i:16 * i + 16].hex() for i in range(p)]
    if len(scores.tasks) > 1:
        for t, task in enumerate(scores.tasks):
            per_example[f"score[{task}]"] = scores.score[t].tolist()
    cols = {"rank": list(range(1, p + 1))}
    for name, values in per_example.items():
        cols[name] = [values[i] for i in order]
    return cols


def _finite_or_neg_inf(x: float) -> float:
    return float("-inf") if x != x else x


def write_table(cols: dict[str, list], out_dir: str) -> None:
    """``scores.parquet`` (every column) and ``sorted.csv`` (the same table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not cols["rank"]:
        raise DataError("no rows to write: the pool is empty")
    with atomic_open(os.path.join(out_dir, "scores.parquet"), "wb") as f:
        pq.write_table(pa.table(cols), f)
    with atomic_open(os.path.join(out_dir, "sorted.csv")) as f:
        w = csv.writer(f)
        names = [c for c in cols if c != "digest"]  # for pick, not for reading
        w.writerow(names)
        for row in zip(*(cols[c] for c in names)):
            w.writerow([_clean(v) for v in row])


def write_less_task(task_dir: str, scores, task_index: int, k: int, pool, name: str) -> None:
    """One target task as LESS's ``write_selected_data.py`` leaves it: ``sorted.csv`` with the
    header ``file name, index, score`` and one ``{label}, {index}, {score rounded to 6}`` row per
    pool example, best first (label: the source file's name without extension; index: the
    example's position in that file), and the top ``k`` records unchanged in ``name``."""
    from trim_fast.selection import select_top_k

    os.makedirs(task_dir, exist_ok=True)
    per_source = collections.Counter()
    ordinal = []
    for src in scores.sources:
        ordinal.append(per_source[src])
        per_source[src] += 1
    task_scores = scores.score[task_index]
    ranked = select_top_k(task_scores, len(scores)).tolist()
    seen = set(ranked)
    ranked += [i for i in range(len(scores)) if i not in seen]  # -inf last, in pool order
    with atomic_open(os.path.join(task_dir, "sorted.csv")) as f:
        f.write("file name, index, score\n")
        for i in ranked:
            label = os.path.basename(str(scores.sources[i])).split(".")[0]
            f.write(f"{label}, {ordinal[i]}, {round(float(task_scores[i]), 6)}\n")
    chosen = select_top_k(task_scores, k).tolist()
    write_coreset(pool.take(chosen), os.path.join(task_dir, name), "jsonl")


def json_value(v, where: str, nonfinite: list | None = None):
    """A record's value as strict JSON holds it: dates -> ISO text, numpy/arrow scalars ->
    Python; bytes cannot be written without changing them, so they are refused. A NaN or
    infinite float is kept when ``nonfinite`` is None (a record read from JSON text, written
    back with the tokens it was read with), else written as null and ``where`` appended."""
    if isinstance(v, float):
        if math.isfinite(v) or nonfinite is None:
            return v
        nonfinite.append(where)
        return None
    if isinstance(v, dict):
        return {k: json_value(x, where, nonfinite) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_value(x, where, nonfinite) for x in v]
    if isinstance(v, (bytes, bytearray)):
        raise DataError(f"{where}: holds binary data, which JSONL cannot carry unchanged; write "
                        "the coreset with --output-format parquet or hf")
    if isinstance(v, (datetime.date, datetime.datetime, datetime.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if hasattr(v, "item") and callable(v.item):  # numpy scalar
        return json_value(v.item(), where, nonfinite)
    return v


def _is_parquet(source) -> bool:
    return file_kind(str(source)) == ("parquet", None)


def _read_from_json_text(ex: Example) -> bool:
    return (file_kind(ex.source) or ("",))[0] in ("jsonl", "json")


def records_table(selected: Sequence[Example]):
    """The records as one Arrow table. Parquet records keep their file's schema; others get one
    schema over every record's fields (a field a record lacks is null in its row: a table has
    one set of columns). Values that do not fit one column type are refused, naming the field."""
    import pyarrow as pa

    rows = [ex.raw for ex in selected]
    schema = _source_schema(selected)
    if schema is not None:
        return pa.Table.from_pylist(rows, schema=schema)
    if not rows:
        return pa.table({})
    try:
        return pa.Table.from_struct_array(pa.array(rows))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        for key in dict.fromkeys(k for r in rows for k in r):
            try:
                pa.array([r.get(key) for r in rows])
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                first = selected[0]
                raise DataError(f"field {key!r} of the selected records (from {first.source}) holds "
                                f"values of different types ({err}); a Parquet or datasets coreset "
                                "needs one type per column: write it with --output-format jsonl") from None
        raise DataError(f"the selected records do not fit one table ({err}); write the coreset "
                        "with --output-format jsonl") from None


def write_coreset(selected: Sequence[Example], path: str, output_format: str = "jsonl") -> None:
    """The selected records unchanged, in the order given (score order)."""
    if output_format == "jsonl":
        nulled: list[str] = []
        with atomic_open(path) as f:
            for ex in selected:
                keep = _read_from_json_text(ex)
                rec = {k: json_value(v, f"{ex.source}:{ex.line}: field {k!r}",
                                     None if keep else nulled) for k, v in ex.raw.items()}
                f.write(json.dumps(rec, ensure_ascii=False, allow_nan=keep) + "\n")
        if nulled:
            logger.warning("%d NaN or infinite value(s) written to the JSONL coreset as null, "
                           "which strict JSON requires (first: %s); --output-format parquet keeps "
                           "them", len(nulled), nulled[0])
        return
    if output_format == "parquet":
        import pyarrow.parquet as pq

        table = records_table(selected)
        with atomic_open(path, "wb") as f:
            pq.write_table(table, f)
        return
    if output_format == "hf":
        import shutil

        import datasets

        ds = datasets.Dataset(records_table(selected)) if len(selected) else datasets.Dataset.from_dict({})
        tmp, old = path + ".tmp", path + ".old"
        shutil.rmtree(tmp, ignore_errors=True)
        bars = datasets.utils.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # a library call draws no bar
        try:
            ds.save_to_disk(tmp)
        finally:
            if not bars:
                datasets.enable_progress_bars()
        # the old folder is moved aside, never deleted first: a coreset is always at `path`
        # but for the instant between the two renames
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        return
    raise ConfigError(f"output format must be one of {OUTPUT_FORMATS[1:]}, got {output_format!r}")


def _source_schema(selected: Sequence[Example]):
    """The schema of the Parquet file(s) the records came from, so values keep their types; None
    (inferred) for other sources or files whose schemas differ."""
    import pyarrow.parquet as pq

    paths = {ex.source for ex in selected}
    if not paths or not all(_is_parquet(p) and os.path.exists(p) for p in paths):
        return None
    schemas = {pq.read_schema(p).remove_metadata() for p in paths}
    return schemas.pop() if len(schemas) == 1 else None


def summary(cfg, scores, sel, banks: dict, *, seconds: float) -> dict:
    """``summary.json``: the resolved config, what was kept, and, where the targets and the pool
    carry ``family`` labels, each task's precision at the selected ``k``."""
    from dataclasses import asdict

    from trim_fast.selection import select_top_k

    summary = {
        "config": asdict(cfg),
        "pool_size": len(scores.ids),
        "k": sel.k,
        "selected": len(sel.indices),
        "selected_by_source": dict(collections.Counter(scores.sources[i] for i in sel.indices)),
        "unscored": {"count": len(sel.unscored), "ids": [scores.ids[i] for i in sel.unscored[:100]]},
        "truncated": int((scores.truncated > 0).sum()),
        "tasks": scores.tasks,
        "scoring": {"tokens": scores.tokens, "forward_seconds": round(scores.seconds_forward, 3),
                    "tokens_per_s": round(scores.tokens / max(scores.seconds_forward, 1e-9), 1),
                    "chunks_reused": scores.chunks_reused},
        "seconds_total": round(seconds, 3),
    }
    fams = scores.families
    if any(f is not None for f in fams):
        share = collections.Counter(fams)
        precision = {}
        for t_i, task in enumerate(scores.tasks):
            fam = banks[task].meta.get("family")
            if fam is None:
                continue
            top = select_top_k(scores.score[t_i], sel.k).tolist()
            hits = sum(1 for i in top if fams[i] == fam)
            precision[task] = {"family": fam, "precision": round(hits / max(1, len(top)), 4),
                               "family_share_of_pool": round(share[fam] / len(fams), 4),
                               "k": len(top)}
        if precision:
            summary["precision_per_task"] = precision
            summary["coreset"] = coreset_precision(precision, [fams[i] for i in sel.indices])
    return summary


def coreset_precision(precision: dict, chosen_families: list) -> dict:
    """The written coreset (the combined selection), not each task's own ranking: the share of
    its records that belong to a task's family (``precision``) and, per task, how many records of
    its family it holds against the fair share ``k / tasks``."""
    n = max(1, len(chosen_families))
    counts = collections.Counter(chosen_families)
    fair = n / len(precision)
    fams = {p["family"] for p in precision.values()}
    return {"precision": round(sum(counts[f] for f in fams) / n, 4), "selected": len(chosen_families),
            "per_task": {task: {"family": p["family"], "count": counts[p["family"]],
                                "share_of_fair": round(counts[p["family"]] / fair, 4)}
                         for task, p in precision.items()}}


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
    matplotlib = require("matplotlib", "plot", "report.png")

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
    if chosen:  # a density of nothing is 0/0
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
