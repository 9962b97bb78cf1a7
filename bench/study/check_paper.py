"""Cross-checks. 1. The study's paper-TRIM scoring (lib.token_selector with DEFAULTS) equals the
shipped library's ``FingerprintBank.build`` + ``match_and_pool`` on the cached final-layer
states, for every task of a cache. 2. ``proposed.py`` (the production-shaped scorer) equals the
study's scoring of the proposed options.

    python bench/study/check_paper.py hard0
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import lib  # noqa: E402


def main(name):
    torch.set_num_threads(2)
    from trim_fast.fingerprints import FingerprintBank
    from trim_fast.ops.token_match import match_and_pool

    c = lib.Cache(name)
    mine = lib.token_selector(c)
    P, T = c.layer("final")
    alpha = c.alpha(6)
    worst = 0.0
    for task in c.tasks:
        tm = c.task_mask(task)
        bank = FingerprintBank.build(T[tm], c.tid[tm], alpha[tm], meta={})
        scores = torch.empty(c.n)
        for i in range(c.n):
            sel = c.pex == i
            r = match_and_pool(P[sel][None], c.pid[sel][None], torch.ones(1, int(sel.sum()), dtype=torch.bool),
                               bank, idf=c.idf_table)
            scores[i] = r.score.float()[0]
        d = (scores - mine[task]).abs().max().item()
        worst = max(worst, d)
        print(f"{task}: max |study - library| = {d:.2e}")
    assert worst < 1e-4, worst
    print("OK: the study's paper scoring equals the library's")




def check_proposed(name):
    """``proposed.build_bank`` + ``score_batch`` (the production-shaped scorer) equal the study's
    ``lib.token_selector`` with the proposed options, on one cache."""
    import proposed
    import sweep

    c = lib.Cache(name)
    opts = dict(sweep.PROPOSED, stat_size=lib.num_selected(c.n))
    mine = lib.token_selector(c, **opts)
    P, T = c.layer(opts["layer"])
    mu = P[c.sample_tokens(opts["stat_size"])].mean(0)
    alpha = c.alpha(6)
    worst = 0.0
    for task in c.tasks:
        tm = c.task_mask(task)
        bank = proposed.build_bank(T[tm], c.tid[tm], alpha[tm], mu, c.idf_table.numel())
        for a in range(0, c.n, 64):
            ex = list(range(a, min(c.n, a + 64)))
            n = max(int((c.pex == i).sum()) for i in ex)
            H = torch.zeros(len(ex), n, P.shape[1])
            ids = torch.zeros(len(ex), n, dtype=torch.long)
            cnt = torch.zeros(len(ex), n, dtype=torch.bool)
            for r, i in enumerate(ex):
                sel = c.pex == i
                m = int(sel.sum())
                H[r, :m], ids[r, :m], cnt[r, :m] = P[sel], c.pid[sel], True
            s = proposed.score_batch(H, ids, cnt, bank, mu)
            worst = max(worst, (s - mine[task][ex]).abs().max().item())
    print(f"proposed.score_batch vs lib: max abs diff {worst:.2e}")
    assert worst < 1e-4, worst


if __name__ == "__main__":
    main(sys.argv[1])
    check_proposed(sys.argv[1])
