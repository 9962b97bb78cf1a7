"""The README's "From Python" example runs as written (on the embedded model), and picks what a
reader would expect; the README's test command is what CI runs."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.slow
def test_from_python_example_runs(capsys):
    code = re.search(r"```python\n(.*?)```", _section("From Python"), re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    # the two unit conversions of the pool are the ones a conversion target picks
    assert sorted(result.indices) == [0, 2]
    assert result.records() == [namespace["pool"][i] for i in result.indices]
    assert "[" in capsys.readouterr().out


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", _section("Two commands, on a fresh machine"), re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def _blocks(title: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", _section(title), re.S)


def _dedent(code: str) -> str:
    import textwrap

    return textwrap.dedent(code)


def test_stages_example_runs_and_reads_the_records_back(tiny_model_dir):
    """The README's stage-by-stage example (after the main one, on the tiny model) picks what
    ``select`` picks, and its last line gives the records ``result.records()`` gives."""
    main, stages = _blocks("From Python")[:2]
    namespace = {}
    main = main.replace("Selector()", f"Selector({tiny_model_dir!r}, device='cpu')")
    exec(compile(main + _dedent(stages), "README.md", "exec"), namespace)
    result, selection = namespace["result"], namespace["selection"]
    assert selection.indices == result.indices
    assert namespace["chosen"] == result.records()
    assert namespace["vectors"].shape[0] == len(namespace["pool"])
    import trim_fast

    assert type(selection) is trim_fast.Selection


def test_kernels_example_runs():
    code = _dedent(next(b for b in _blocks("From Python") if "attention_saliency" in b))
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    stats, alpha = namespace["stats"], namespace["alpha"]
    assert stats.row_entropy.shape == (2, 16) and stats.num_heads == 4
    assert alpha.shape == (2, 16) and (alpha[1, 11:] == 0).all() and (alpha[:, :11] > 0).all()


@pytest.mark.slow
def test_the_embedded_model_loads_as_a_causal_lm():
    """README "Models": load_causal_lm() is the embedded default with its LM head, the same
    weights load_model() scores with."""
    import torch

    from trim_fast import load_causal_lm, load_model

    lm, base = load_causal_lm(device="cpu"), load_model(device="cpu")
    assert type(lm).__name__ == "LlamaForCausalLM"
    assert all(torch.equal(a, b) for a, b in zip(lm.model.state_dict().values(),
                                                 base.state_dict().values()))


def test_data_juicer_recipe_names_its_text_column():
    """data-juicer loads a pool through ``text_keys``; its default, ``text``, is not in chat
    rows. (tests/test_integrations.py runs this recipe.)"""
    import yaml

    recipe = yaml.safe_load(re.search(r"```yaml\n(dataset_path.*?)```",
                                      _section("Inside DataFlex / data-juicer"), re.S).group(1))
    assert recipe["text_keys"] == "messages" and "trim_selector" in recipe["process"][0]
