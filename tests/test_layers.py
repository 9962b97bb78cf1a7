"""The layer order of trim_fast, written down once (README "Layout" points here), and held: every
import of a trim_fast module, at the top or inside a function, goes to a module of the same layer
or one below. A new module must be placed in a layer before this test passes."""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "trim_fast"

# Bottom first. Entries are module names under trim_fast; an entry covers its submodules, and
# the longest entry that matches a module places it.
LAYERS = (
    # the base: the error types, result types and constants, checks, the compiled extension and its loader, the
    # network policy, small shared helpers, atomic files and the ranks of a torchrun group
    ("errors", "types", "validation", "_C", "_ext", "_lazy", "_notice", "progress", "extras", "hub", "digests",
     "run", "run.files", "run.distributed"),
    # settings, the naive oracle, the kernels, saliency -> alpha
    ("config", "reference", "ops", "saliency"),
    # records: sources, shapes, rendering to counted tokens (SPEC 0); token chunks and batches
    ("data", "batching"),
    # models and the capture inside their attention
    ("models", "capture"),
    # fingerprint banks and building them (SPEC 2)
    ("bank",),
    # the resumable work directory and the streamed pool scorer (SPEC 3)
    ("run.workdir", "scoring"),
    # combine, round k, top-k (SPEC 4)
    ("selection",),
    # output files of a selection; a run's inputs read and checked; a score table read back
    ("run.outputs", "run.inputs", "run.score_table"),
    # the library's front door (the package itself re-exports it)
    ("api", ""),
    # the LoRA warmup (SPEC 5), which runs selections
    ("warmup",),
    # whole runs with their outputs, under the faces
    ("run.pipeline",),
    # the faces
    ("__main__", "cli", "flags", "evaluation", "demo", "integrations", "benchmark"),
)


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        found[".".join(parts)] = path
    return found


def layer_of(module: str) -> int:
    """The layer of a module name relative to trim_fast ("" is the package itself)."""
    best, where = -1, None
    for i, entries in enumerate(LAYERS):
        for e in entries:
            if (module == e or (e and module.startswith(e + "."))) and len(e) > best:
                best, where = len(e), i
    if where is None:
        raise KeyError(module)
    return where


def _relative(name: str) -> str:
    return name.removeprefix("trim_fast").removeprefix(".")


def imports(module: str, path: pathlib.Path) -> list[tuple[str, int]]:
    """(imported trim_fast module relative name, line) for every import in the file."""
    modules = set(_modules())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
                base = f"trim_fast.{base}" if base else "trim_fast"
            else:
                base = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod
            names = [f"{base}.{a.name}" if _relative(f"{base}.{a.name}") in modules | {"_C"}
                     else base for a in node.names]
        else:
            continue
        out += [(_relative(n), node.lineno) for n in names
                if n == "trim_fast" or n.startswith("trim_fast.")]
    return out


def test_every_module_has_a_layer():
    unplaced = []
    for module in _modules():
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"place these modules in LAYERS (tests/test_layers.py): {unplaced}"


def test_imports_go_down_or_sideways():
    upward = []
    for module, path in sorted(_modules().items()):
        here = layer_of(module)
        for target, line in imports(module, path):
            if layer_of(target) > here:
                upward.append(f"trim_fast/{path.relative_to(PACKAGE)}:{line}: {module or 'trim_fast'}"
                              f" (layer {here}) imports {target or 'trim_fast'} "
                              f"(layer {layer_of(target)})")
    assert not upward, "imports running up the layer order:\n" + "\n".join(upward)


@pytest.mark.parametrize("source, target", [("config", "data.render"), ("data.sources", "models.loading"),
                                            ("bank", "scoring.engine"), ("ops.nearest", "")])
def test_the_check_sees_an_upward_import(tmp_path, monkeypatch, source, target):
    """The check itself: an upward import written into a copy of a module is reported."""
    path = _modules()[source]
    fake = tmp_path / path.name
    fake.write_text(path.read_text() + f"\n\ndef _up():\n    import trim_fast{'.' + target if target else ''}\n")
    found = [t for t, _ in imports(source, fake)]
    assert target in found and layer_of(target) > layer_of(source)
