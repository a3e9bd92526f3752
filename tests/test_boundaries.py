"""The package's import boundaries (STYLE.md rule 1), checked on the code itself, not only by the linter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "onnx_poem"
ONNX_STACK = {"onnx", "onnxruntime", "onnx_graphsurgeon"}


def _imports(path: Path) -> set[str]:
    """Top-level names a module imports (relative imports as ``.name``), at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or "").split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((PACKAGE / "solvers").glob("*.py")), ids=lambda p: p.name)
def test_solvers_import_only_numpy_scipy_and_themselves(path: Path) -> None:
    allowed = {
        "numpy",
        "scipy",
        "__future__",
        "collections",
        "dataclasses",
        "typing",
        "logging",
        "math",
        "itertools",
        ".",
        "..",
    }
    extra = {n for n in _imports(path) if n not in allowed and not n.startswith(".")}
    assert not extra, f"{path.name} imports {extra}"
    assert all(n in (".", "..", ".activations", ".linalg", ".greedy", ".merge", ".reconstruct", ".select", "..errors")
               or not n.startswith(".") for n in _imports(path)), _imports(path)  # fmt: skip


def test_only_graph_imports_onnx_graphsurgeon() -> None:
    users = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "onnx_graphsurgeon" in _imports(p)}
    assert users == {"graph.py"}


def test_importing_the_solvers_loads_no_onnx() -> None:
    # the package __init__ imports the API (and so onnx); the solvers themselves must not need it
    probe = f"""
import importlib.util, sys, types
spec = importlib.util.spec_from_file_location("onnx_poem", {str(PACKAGE / "__init__.py")!r},
                                              submodule_search_locations=[{str(PACKAGE)!r}])
pkg = types.ModuleType("onnx_poem"); pkg.__path__ = [{str(PACKAGE)!r}]; sys.modules["onnx_poem"] = pkg
import onnx_poem.solvers
print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(ONNX_STACK)!r}))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def test_the_linter_rule_guards_the_solvers(tmp_path: Path) -> None:
    """ruff's banned-import rule bites in solvers/ (a per-file ignore once switched it off there)."""
    bad = PACKAGE / "solvers" / "_lint_probe.py"
    bad.write_text("import onnx\n")
    try:
        res = subprocess.run(["ruff", "check", "--select", "TID253", str(bad)], capture_output=True, text=True)
    finally:
        bad.unlink()
    assert res.returncode == 1 and "TID253" in res.stdout, res.stdout + res.stderr


def test_the_pipeline_stages_depend_only_on_their_context_and_the_engine() -> None:
    """api.py orchestrates the stages of onnx_poem/pipeline/; no stage imports the API (no cycle), the shared
    context imports no stage, and only the candidates (auto choices) run other stages."""
    stages = {p.stem: _imports(p) for p in (PACKAGE / "pipeline").glob("*.py") if p.stem != "__init__"}
    assert {"analyse", "allocate", "solving", "summary", "context", "candidates"} <= set(stages)
    for name, imports in stages.items():
        assert "..api" not in imports, name
        siblings = {n[1:] for n in imports if n.startswith(".") and not n.startswith("..")}
        allowed = set(stages) - {name} if name == "candidates" else ({"context"} if name != "context" else set())
        assert siblings <= allowed, (name, siblings)
