"""The benchmark scripts run on other machines (a lent GPU, an idle CPU) long after they were written: every
name they import from sibo must still exist, or a refactor breaks a measurement nobody reruns in CI."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def sibo_imports(script: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from sibo… import name` in the script, at any depth."""
    found = []
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sibo":
            found += [(node.module, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("script", sorted(BENCHMARKS.glob("*.py")), ids=lambda path: path.name)
def test_every_name_a_benchmark_imports_from_sibo_exists(script):
    missing = []
    for module, name in sibo_imports(script):
        imported = importlib.import_module(module)
        if not hasattr(imported, name):
            try:
                importlib.import_module(f"{module}.{name}")  # a submodule
            except ModuleNotFoundError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{script.name} imports names sibo no longer has: {missing}"


def test_the_finder_sees_imports_inside_functions(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text("def main():\n    from sibo.prompts import no_such_name\n")
    assert sibo_imports(script) == [("sibo.prompts", "no_such_name")]
