"""The floors of the house: what each package may import of sibo (README, "How the code is laid out")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sibo

PACKAGE = Path(sibo.__file__).parent


def _sibo_imports(path: Path) -> set[str]:
    """Every sibo module `path` imports, at the top or inside a function; `from sibo import x` counts as sibo.x."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "sibo"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "sibo":
            found |= {
                f"{node.module}.{alias.name}" if node.module == "sibo" else node.module
                for alias in node.names
            }
    return found


def _modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def test_no_module_imports_relatively():
    """_sibo_imports reads absolute imports only: a relative one would cross a floor unseen."""
    relative = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in _modules(".")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert relative == []


@pytest.mark.parametrize("path", _modules("core"), ids=lambda path: path.name)
def test_core_imports_only_core_and_errors(path):
    outside = {name for name in _sibo_imports(path) if not name.startswith(("sibo.core.", "sibo.errors"))}
    assert outside == set()


def test_train_does_not_import_decode():
    imports = {path.name: _sibo_imports(path) for path in _modules("train")}
    assert {
        name: sorted(i for i in found if i.startswith("sibo.decode")) for name, found in imports.items()
    } == {name: [] for name in imports}


def test_no_module_reads_the_lazy_package():
    """`import sibo` / `from sibo import get_sibo_model` inside sibo would load the public names' modules
    behind the reader's back; modules import what they use from where it lives."""
    lazy = {f"sibo.{name}" for name in sibo.__all__} | {"sibo"}
    readers = {
        str(path.relative_to(PACKAGE)): sorted(_sibo_imports(path) & lazy)
        for path in PACKAGE.rglob("*.py")
        if _sibo_imports(path) & lazy
    }
    assert readers == {}
