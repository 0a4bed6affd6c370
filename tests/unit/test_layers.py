"""The dependency rule: protocol and core import nothing else of the package; state only core."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "linguamesh"

ALLOWED = {
    "protocol": {"protocol"},
    "core": {"core"},
    "state": {"core", "state", "observability", "protocol"},
}


def _imports(path: Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.startswith("linguamesh."):
                out.add(node.module.split(".")[1])
            elif node.level == 1:
                out.add(package)
            elif node.level >= 2 and node.module:
                out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("linguamesh."):
                    out.add(alias.name.split(".")[1])
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_layer_imports(package: str) -> None:
    for path in (SRC / package).rglob("*.py"):
        bad = _imports(path, package) - ALLOWED[package]
        assert not bad, f"{path.relative_to(SRC)} imports {bad}"
