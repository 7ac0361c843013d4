"""The benchmarks are not run by the suite (speed is never a unit test), but they must not rot: every one
imports, and every name it imports from vstmon, the benchmarks or the test helpers, at the top or inside a
function, still exists (a rename in the package once broke the kit's ``constant`` section unnoticed)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.helpers.cli import REPO_ROOT

BENCHMARKS = sorted((REPO_ROOT / "benchmarks").glob("*.py"))
_OURS = ("vstmon", "benchmarks", "tests")


def _imported_names(path: Path) -> list[tuple[str, str, int]]:
    """(module, name, line) of every ``from <ours> import name`` anywhere in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in _OURS:
            found += [(node.module, alias.name, node.lineno) for alias in node.names]
    return found


@pytest.mark.parametrize("path", [p for p in BENCHMARKS if p.name != "__init__.py"], ids=lambda p: p.stem)
def test_a_benchmark_imports_and_every_name_it_imports_exists(path: Path) -> None:
    importlib.import_module(f"benchmarks.{path.stem}")
    missing = []
    for module, name, line in _imported_names(path):
        if not hasattr(importlib.import_module(module), name):
            try:
                importlib.import_module(f"{module}.{name}")  # a submodule
            except ImportError:
                missing.append(f"{path.name}:{line}: {module} has no {name}")
    assert not missing, "\n".join(missing)
