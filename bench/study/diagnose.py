"""Why the paper's scoring reads the topic and the matched-only score reads the task: per task of a
hard-pool cache, the mean over the task's own family, its partner family and the other families of

- coverage: the share of an example's counted tokens that have a fingerprint (token-id overlap
  with the targets),
- the paper's score S (SPEC defaults) and its Spearman correlation with coverage over the pool,
- the proposed score (matched tokens only, final layer, centred, no IDF).

    python bench/study/diagnose.py hard0
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib  # noqa: E402
import sweep  # noqa: E402


def spearman(a, b):
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main(name):
    torch.set_num_threads(2)
    from trim_fast.demo.hard import PARTNER

    c = lib.Cache(name)
    paper = lib.token_selector(c)
    prop = lib.token_selector(c, **dict(sweep.PROPOSED, stat_size=lib.num_selected(c.n)))
    fam = c.families
    print("| task | coverage own / partner / others | paper S own / partner / others | "
          "Spearman(paper S, coverage) | proposed S own / partner / others | Spearman(proposed S, coverage) |")
    print("|---|---|---|---|---|---|")
    for task in c.tasks:
        tm = c.task_mask(task)
        classes = torch.unique(c.tid[tm])
        has = torch.zeros(int(max(c.pid.max(), classes.max())) + 1, dtype=torch.bool)
        has[classes] = True
        cov = lib.seg_sum(has[c.pid].double(), c.pex, c.n) / c.counted_lengths.double()
        groups = {"own": [i for i in range(c.n) if fam[i] == task],
                  "partner": [i for i in range(c.n) if fam[i] == PARTNER.get(task)],
                  "others": [i for i in range(c.n) if fam[i] not in (task, PARTNER.get(task))]}
        m = lambda x: " / ".join(f"{float(x[g].mean()):.3f}" for g in groups.values())  # noqa: E731
        print(f"| {task} | {m(cov)} | {m(paper[task])} | {spearman(paper[task], cov):.2f} | "
              f"{m(prop[task])} | {spearman(prop[task], cov):.2f} |")


if __name__ == "__main__":
    main(sys.argv[1])
