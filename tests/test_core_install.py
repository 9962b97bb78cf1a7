"""The core install is the library: without the optional extras (matplotlib, bm25s, faiss), the
import and the README's "From Python" example work; the faces that need an extra say which."""
from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import textwrap
import tomllib

from trim_fast.extras import EXTRAS

ROOT = pathlib.Path(__file__).resolve().parents[1]
# import name of each distribution the extras list
IMPORT_NAMES = {"matplotlib": "matplotlib", "bm25s": "bm25s", "faiss-cpu": "faiss", "pyyaml": "yaml"}
BLOCKED = ("matplotlib", "bm25s", "faiss")  # pyyaml is not: transformers and datasets require it

_BLOCK = textwrap.dedent(f"""
    import sys
    for name in {BLOCKED!r}:
        sys.modules[name] = None   # `import name` now raises ImportError
""")


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK + textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def _readme_python() -> str:
    text = (ROOT / "README.md").read_text().split("## From Python\n", 1)[1]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_readme_example_runs_without_the_extras(tiny_model_dir):
    code = _readme_python()
    assert "Selector()" in code
    code = code.replace("Selector()", "Selector(sys.argv[1], device='cpu')")  # tiny, not embedded
    out = _run("import trim_fast\n" + code + textwrap.dedent(f"""
        import json
        print("RESULT", json.dumps({{"indices": result.indices, "n": len(result.records()),
                                   "loaded": sorted(m for m in {BLOCKED!r}
                                                    if sys.modules.get(m) is not None)}}))
    """), tiny_model_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert len(result["indices"]) == 2 and result["n"] == 2 and result["loaded"] == []


def test_faces_name_the_extra_they_need(tmp_path):
    out = _run("""
        from trim_fast.cli import main
        raise SystemExit(main(["pick", "--scores", "x.parquet", "--pool", "x.jsonl", "--out", "o"]))
    """)
    assert out.returncode == 2 and "pip install 'trim-fast[cli]'" in out.stderr, out.stderr[-2000:]
    out = _run("""
        from trim_fast.run.outputs import write_report
        write_report({"score": [1.0], "selected": [True], "n_tokens": [3], "source": ["a"]}, "r.png")
    """)
    assert "report.png needs the 'matplotlib' package: pip install 'trim-fast[plot]'" in out.stderr
    out = _run("""
        from trim_fast.evaluation.metrics import bm25_scores
        bm25_scores(["a b"], ["a"])
    """)
    assert "pip install 'trim-fast[bm25]'" in out.stderr


def test_the_extras_module_matches_pyproject():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def modules(extra: str) -> set[str]:
        found = set()
        for req in extras[extra]:
            nested = re.fullmatch(r"trim-fast\[(.*)\]", req)
            if nested:
                for e in nested.group(1).split(","):
                    found |= modules(e)
            else:
                name = re.split(r"[<>=;\[ ]", req, maxsplit=1)[0]
                found.add(IMPORT_NAMES.get(name, name))
        return found

    assert {e: set(m) for e, m in EXTRAS.items()} == {e: modules(e) for e in EXTRAS}
    assert modules("test") >= modules("all") >= set().union(*EXTRAS.values())
