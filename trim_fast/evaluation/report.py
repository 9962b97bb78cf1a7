"""The evaluation's result as files: ``quality.json``, the markdown tables of ``quality.md`` (each
selector shown by its label, keyed by its stable id) and the plot ``quality.png``."""
from __future__ import annotations

import os

from trim_fast.evaluation.quality import LABELS, RANDOM_SEEDS
from trim_fast.extras import require


def format_markdown(result: dict, downstream: dict | None = None, title: str = "") -> str:
    """The tables of a run as markdown: per task, the summary over tasks, the study."""
    lines = [f"{title}Pool: {result['pool_size']} examples, {len(result['families'])} target "
             f"tasks. Precision (P) at k = 5% of the pool and at k = the family's size; random "
             f"is the mean over {len(RANDOM_SEEDS)} seeds.", ""]
    selectors = list(result["summary"])
    label = {**LABELS, **result.get("labels", {})}
    lines += ["| selector | mean P@5% | worst P@5% | mean P@|family| | worst P@|family| |",
              "|---|---|---|---|---|"]
    for name in selectors:
        m = result["summary"][name]
        lines.append(f"| {label.get(name, name)} | {m['mean P@5%']:.3f} | {m['worst P@5%']:.3f} | "
                     f"{m['mean P@|family|']:.3f} | {m['worst P@|family|']:.3f} |")
    tasks = list(result["families"])
    lines += ["", "Per task, P@5% / P@|family|:", "",
              "| selector | " + " | ".join(f"{t} ({result['families'][t]['family_size']})" for t in tasks) + " |",
              "|---|" + "---|" * len(tasks)]
    for name in selectors:
        cells = [f"{result['families'][t]['selectors'][name]['P@5%']:.3f} / "
                 f"{result['families'][t]['selectors'][name]['P@|family|']:.3f}" for t in tasks]
        lines.append(f"| {label.get(name, name)} | " + " | ".join(cells) + " |")
    if "study" in result:
        lines += ["", "Study (each row a SelectionConfig; mean and worst over the tasks):", "",
                  "| group | setting | mean P@5% | worst P@5% | mean P@|family| | worst P@|family| |",
                  "|---|---|---|---|---|---|"]
        for r in result["study"]:
            lines.append(f"| {r['group']} | {r['setting']} | {r['mean P@5%']:.3f} | "
                         f"{r['worst P@5%']:.3f} | {r['mean P@|family|']:.3f} | "
                         f"{r['worst P@|family|']:.3f} |")
    if "checks" in result:
        lines += _checks_markdown(result["checks"])
    if downstream:
        size = sorted(set(downstream["train_size"].values()))
        lines += ["", f"Downstream: LoRA fine-tune on each selection ({'/'.join(map(str, size))} "
                  f"examples, same seed and budget), held-out loss on {downstream['heldout_size']} "
                  f"new '{downstream['family']}' examples:", "",
                  "| trained on | held-out loss | share of the family in the training set |",
                  "|---|---|---|"]
        for name, loss in downstream["losses"].items():
            share = downstream["family_share_of_training_set"].get(name)
            lines.append(f"| {label.get(name, name)} | {loss:.4f} | {'-' if share is None else f'{share:.2f}'} |")
    return "\n".join(lines) + "\n"


def _checks_markdown(checks: dict) -> list[str]:
    lines = ["", "Pre-tokenized LLaMA-Factory rows (labels on the answer and the template's "
             "end-of-turn tokens; scope all: the labels dropped, as DataFlex's `scope: all`) "
             "against the same pool as chat records, mean / worst P@|family|:", "",
             "| method, scope | chat records | LLaMA-Factory rows |", "|---|---|---|"]
    for name, scopes in checks["pre-tokenized rows"].items():
        for scope, r in scopes.items():
            cells = [f"{r[k]['mean P@|family|']:.3f} / {r[k]['worst P@|family|']:.3f}"
                     for k in ("chat records", "LLaMA-Factory rows")]
            lines.append(f"| {LABELS.get(name, name)}, scope {scope} | " + " | ".join(cells) + " |")
    lines += ["", "The coreset a multi-task run writes (5%, tasks combined by `combine`): the worst "
              "family's records against its fair share k / tasks, the file's precision, and the "
              "records of each family:", "",
              "| method | combine | worst share of fair | precision | records per family |",
              "|---|---|---|---|---|"]
    for name, modes in checks["coreset"].items():
        for how, r in modes.items():
            counts = ", ".join(f"{f} {n}" for f, n in r["counts"].items())
            lines.append(f"| {LABELS.get(name, name)} | {how} | {r['worst share of fair']:.2f} | "
                         f"{r['precision']:.3f} | {counts} |")
    return lines


def write_plot(result: dict, path: str) -> None:
    matplotlib = require("matplotlib", "plot", "quality.png")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(result["families"])
    selectors = list(result["summary"])
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 4.5))
    width = 0.8 / len(selectors)
    for s_i, sel in enumerate(selectors):
        vals = [result["families"][t]["selectors"][sel]["P@|family|"] for t in tasks]
        ax.bar([i + s_i * width for i in range(len(tasks))], vals, width,
               label={**LABELS, **result.get("labels", {})}.get(sel, sel))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks, rotation=20, ha="right")
    ax.set(ylabel="precision at k = |family|", title="selection precision per target family",
           ylim=(0, 1.05))
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_result(result: dict, out_dir: str, downstream: dict | None = None, *,
                warmed: dict | None = None) -> None:
    from trim_fast.run.files import atomic_open
    from trim_fast.run.outputs import write_json

    os.makedirs(out_dir, exist_ok=True)
    write_json(dict(result, downstream=downstream, warmed=warmed),
               os.path.join(out_dir, "quality.json"))
    text = format_markdown(result, downstream, title="**Without warmup.** ")
    if warmed is not None:
        text += "\n" + format_markdown(warmed, title="**After the LoRA warmup (SPEC 5).** ")
    with atomic_open(os.path.join(out_dir, "quality.md")) as f:
        f.write(text)
    write_plot(result, os.path.join(out_dir, "quality.png"))


__all__ = ["format_markdown", "write_plot", "save_result"]
