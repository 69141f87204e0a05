"""The packages import each other in one direction only: ``cli`` drives ``agent`` and
``controller``, which both build on the core ``dnsmesh``; nothing imports upward."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# For each package, the top-level packages it must never import (also lazily, in a function).
FORBIDDEN = {
    "dnsmesh": {"agent", "controller", "cli"},
    "agent": {"controller", "cli"},
    "controller": {"agent", "cli"},
}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_upward(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_top_levels(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_importing_every_core_module_loads_neither_agent_nor_controller() -> None:
    # A fresh interpreter, so modules other tests imported do not count.
    modules = sorted(
        f"dnsmesh.{path.stem}"
        for path in (ROOT / "dnsmesh").glob("*.py")
        if path.stem != "__init__"
    )
    script = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {modules!r}:
            importlib.import_module(name)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("agent", "controller", "cli")))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
