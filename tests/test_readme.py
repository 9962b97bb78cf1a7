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
