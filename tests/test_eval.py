"""Issue 9: the quality evaluation, its metrics and baselines."""
import json
import math

from trim_fast.cli import main
from trim_fast.evaluation.metrics import bm25_scores, precision_recall, random_selections


def test_precision_recall_by_hand():
    labels = ["a", "b", "a", "a", "c"]
    assert precision_recall([0, 1], labels, "a") == (0.5, 1 / 3)
    assert precision_recall([0, 2, 3], labels, "a") == (1.0, 1.0)


def test_bm25_prefers_documents_sharing_rare_query_words():
    pool = ["convert meters to feet", "sort the list", "convert the list", "meters meters feet"]
    s = bm25_scores(pool, ["how many feet in meters"])
    assert s[1] == 0 and s[0] > s[2] and s[3] > s[2]
    # the idf: a word in every document weighs less than a rare one
    s2 = bm25_scores(["x common", "y common", "z common rare"], ["common rare"])
    assert s2[2] > s2[0] == s2[1] > 0


def _bm25_by_hand(pool_texts, query_texts, k1=1.5, b=0.75):
    """The textbook formula, term by term: the oracle of the library-backed bm25_scores."""
    from collections import Counter

    from trim_fast.evaluation.metrics import words

    docs = [Counter(words(t)) for t in pool_texts]
    lengths = [sum(d.values()) for d in docs]
    avg = sum(lengths) / len(docs)
    df = Counter(w for d in docs for w in d)
    query = Counter(w for q in query_texts for w in words(q))
    out = []
    for d, length in zip(docs, lengths):
        s = 0.0
        for w, qf in query.items():
            tf = d.get(w, 0)
            if tf:
                idf = math.log(1 + (len(docs) - df[w] + 0.5) / (df[w] + 0.5))
                s += qf * idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg))
        out.append(s)
    return out


def test_bm25_equals_the_textbook_formula():
    from trim_fast.demo.generate import FAMILIES, make_example
    import random

    rng = random.Random(0)
    pool = [" ".join(make_example(FAMILIES[i % 6], rng)) for i in range(200)]
    queries = [" ".join(make_example("unit_conversion", rng)) for _ in range(5)] + ["zzz unseen"]
    got = bm25_scores(pool, queries)
    want = _bm25_by_hand(pool, queries)
    assert max(abs(g - w) for g, w in zip(got.tolist(), want)) < 1e-9
    assert bm25_scores(pool, ["zzz unseen"]).abs().sum() == 0


def test_random_selections_are_seeded():
    assert random_selections(50, 5, [0, 1]) == random_selections(50, 5, [0, 1])
    assert len(set(map(tuple, random_selections(50, 5, [0, 1])))) == 2


def test_eval_command_end_to_end(tmp_path, tiny_model_dir):
    out = tmp_path / "eval"
    assert main(["eval", "--model", tiny_model_dir, "--pool-size", "60", "--targets-per-family", "3",
                 "--heldout-size", "4", "--downstream-epochs", "1", "--downstream-r", "4",
                 "--out", str(out)]) == 0
    result = json.load(open(out / "quality.json"))
    assert result["pool_size"] == 60 and len(result["families"]) == 6
    selectors = {"trim_default", "trim_paper", "bm25", "random",
                 "mean_cosine_last", "mean_cosine_last_centred",
                 "mean_cosine_two_thirds", "mean_cosine_two_thirds_centred"}
    assert set(result["summary"]) == selectors
    for fam in result["families"].values():
        assert set(fam["selectors"]) == selectors and fam["family_size"] == 10
        for metrics in fam["selectors"].values():
            for k, v in metrics.items():
                assert (0.0 <= v <= 1.0) if k.startswith(("P@", "R@")) else v > 0
        # recall at k = family size equals precision there
        trim = fam["selectors"]["trim_default"]
        assert math.isclose(trim["P@|family|"], trim["R@|family|"])
    for name, s in result["summary"].items():
        worst = min(f["selectors"][name]["P@|family|"] for f in result["families"].values())
        assert s["worst P@|family|"] == worst
    assert {r["group"] for r in result["study"]} == {"matched", "paper"}
    down = result["downstream"]
    assert set(down["losses"]) == {"base_model", "trim_default", "trim_paper",
                                   "mean_cosine", "random"}
    assert all(math.isfinite(v) and v > 0 for v in down["losses"].values())
    assert set(down["train_size"].values()) == {3} and down["heldout_size"] == 4
    md = (out / "quality.md").read_text()
    assert "| TRIM default (matched) |" in md and "Downstream" in md and "Study" in md
    assert "| mean-cosine, layer 2, centred |" in md and result["labels"]["mean_cosine_two_thirds"] \
        == "mean-cosine, layer 2"
    assert len({r["id"] for r in result["study"]}) == len(result["study"])  # stable and distinct
    assert (out / "quality.png").stat().st_size > 0


def test_eval_on_the_hard_pool_with_warmup(tmp_path, tiny_model_dir):
    out = tmp_path / "hard"
    assert main(["eval", "--model", tiny_model_dir, "--pool-kind", "hard", "--per-family", "12",
                 "--targets-per-family", "2", "--no-study", "--warmup", "--downstream", "none",
                 "--out", str(out)]) == 0
    result = json.load(open(out / "quality.json"))
    assert result["pool_size"] == 96 and len(result["families"]) == 8
    warmed = result["warmed"]
    assert set(warmed["summary"]) == set(result["summary"])
    assert warmed["warmup"]["subset_size"] == 5  # round(0.05 * 96), SPEC 5
    assert "After the LoRA warmup" in (out / "quality.md").read_text()


def test_eval_refuses_an_unlabelled_pool(tmp_path, tiny_model_dir, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"text": "no family here"}) + "\n")
    rc = main(["eval", "--model", tiny_model_dir, "--pool", str(pool), "--targets", str(pool),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "labelled pool" in capsys.readouterr().err
