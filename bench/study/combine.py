"""A mixed pool from two caches of the same model: pools and targets concatenated, every family
a task (e.g. the hard pool + the demo pool, where hard families meet demo families of the same
topic: unit_convert / unit_conversion, doc_explain / python_docs). No forward pass.

    python bench/study/combine.py mixed0 hard0 demo0
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib import CACHE_ROOT  # noqa: E402


def main(out, a, b):
    da, db, do = (os.path.join(CACHE_ROOT, x) for x in (a, b, out))
    os.makedirs(do, exist_ok=True)
    ma = torch.load(os.path.join(da, "meta.pt"), weights_only=False)
    mb = torch.load(os.path.join(db, "meta.pt"), weights_only=False)
    assert ma["depth"] == mb["depth"] and ma["adapter"] == mb["adapter"], "caches of different models"
    meta = dict(ma)
    for part in ("pool", "targets"):
        meta[part] = {k: ma[part][k] + mb[part][k] for k in ma[part]}
    meta["task_families"] = ma["task_families"] + mb["task_families"]
    meta["pool_name"] = f"{a}+{b}"
    meta["seconds_pool_forward"] = ma["seconds_pool_forward"] + mb["seconds_pool_forward"]
    meta["manifest"] = {"parts": [ma["manifest"], mb["manifest"]]}
    torch.save(meta, os.path.join(do, "meta.pt"))
    sa = torch.load(os.path.join(da, "saliency.pt"), weights_only=False)
    sb = torch.load(os.path.join(db, "saliency.pt"), weights_only=False)
    torch.save({L: {k: torch.cat([sa[L][k], sb[L][k]]) for k in sa[L]} for L in sa},
               os.path.join(do, "saliency.pt"))
    for f in sorted(os.listdir(da)):
        if f.startswith("layer_"):
            xa = torch.load(os.path.join(da, f))
            xb = torch.load(os.path.join(db, f))
            dt = torch.promote_types(xa["pool"].dtype, xb["pool"].dtype)
            torch.save({"pool": torch.cat([xa["pool"].to(dt), xb["pool"].to(dt)]),
                        "targets": torch.cat([xa["targets"], xb["targets"]])}, os.path.join(do, f))
    print(f"{out}: {len(meta['pool']['families'])} pool examples, {len(meta['task_families'])} tasks")


if __name__ == "__main__":
    main(*sys.argv[1:4])
