"""The shape of the code: imports point down, and no function is longer than a screen and a half.

Layers, lowest first (a module imports only modules below it):
    errors, storage, config, model, tokenizer, runtime, checkpoint, sources, data, runlog, runplan
then the entry points train.py and sample.py, which never import each other, and scripts/,
which the core never imports.
"""

import ast
from pathlib import Path

import pytest
from conftest import ROOT

LAYERS = ["errors", "storage", "config", "model", "tokenizer", "runtime", "checkpoint", "sources", "data",
          "runlog", "runplan"]
ENTRY_POINTS = ["train", "sample"]
PROJECT = set(LAYERS) | set(ENTRY_POINTS) | {"scripts"}
MAX_LINES = 80


def imported(path: Path) -> set[str]:
    """Project modules a file imports, at any depth of the file (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names & PROJECT


@pytest.mark.parametrize("module", LAYERS + ENTRY_POINTS)
def test_imports_point_down(module):
    below = set(LAYERS[:LAYERS.index(module)]) if module in LAYERS else set(LAYERS)
    got = imported(ROOT / f"{module}.py") - {module}
    assert got <= below, f"{module}.py imports {sorted(got - below)}, which are not below it"


def test_sample_never_imports_train_and_the_core_never_imports_scripts():
    assert "train" not in imported(ROOT / "sample.py")
    for module in LAYERS + ENTRY_POINTS:
        assert "scripts" not in imported(ROOT / f"{module}.py"), module


def python_files():
    return sorted([*ROOT.glob("*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("tests/*.py")])


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_every_core_file_opens_with_a_docstring():
    for module in LAYERS + ENTRY_POINTS:
        tree = ast.parse((ROOT / f"{module}.py").read_text())
        doc = ast.get_docstring(tree)
        assert doc and len(doc.splitlines()) >= 3, f"{module}.py has no opening docstring"


def test_the_constraints_pin_every_requirement_at_its_version():
    """constraints.txt (pip freeze of a tested environment) holds each package the requirements
    files name, at the same version: a requirement changed without refreezing is caught here."""
    def pins(name):
        lines = (ROOT / name).read_text().splitlines()
        pairs = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
        return {n.lower().replace("_", "-"): v for n, v in pairs}
    frozen = pins("constraints.txt")
    for name in ["requirements.txt", "requirements-dev.txt"]:
        for package, version in pins(name).items():
            assert frozen.get(package) == version, f"{name}: {package}=={version}; constraints.txt has " \
                                                   f"{frozen.get(package)}: run make constraints"
    assert frozen["torch"] == "2.13.0"  # no +cpu: a CUDA build of the same version satisfies it
    assert "setuptools" in frozen and "pip" not in frozen  # torch needs setuptools; pip is the venv's own
