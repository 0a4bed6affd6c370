"""The shape of the package: layers, module size and no import cycles.

* protocol and core import nothing else of the package; state only core, protocol
  and observability;
* no module in ``src/linguamesh`` is over ``MAX_LINES`` lines;
* no runtime import cycle anywhere: imports at module level and inside functions
  count; imports under ``if TYPE_CHECKING:`` do not (they name a type for a reader
  and the type checker, they are no tie at run time).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "linguamesh"
MAX_LINES = 600

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
            elif node.level >= 2:
                out.update(alias.name for alias in node.names)
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


# ---------------------------------------------------------------------- module graph


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_block(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``if typing.TYPE_CHECKING:``)."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except what sits in the body of an ``if TYPE_CHECKING:``
    block (its ``else:`` runs, so it counts)."""
    out: list[ast.AST] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if _type_checking_block(node):
            assert isinstance(node, ast.If)
            todo.append(node.test)
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def module_graph(root: Path) -> dict[str, set[str]]:
    """``module -> modules of the package it imports at run time``, for every ``.py``
    under ``root``.

    ``from X import a`` counts as importing ``X.a`` when that is a module, else ``X``.
    Imports under ``if TYPE_CHECKING:`` are left out (:func:`runtime_nodes`)."""
    files = {module_name(root, p): p for p in root.rglob("*.py")}
    top = root.name
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        here = mod.split(".") if is_pkg else mod.split(".")[:-1]
        deps: set[str] = set()
        for node in runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name == top or a.name.startswith(top + ".")]
                deps.update(n for n in names if n in files)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif node.module and (node.module == top or node.module.startswith(top + ".")):
                    target = node.module
                else:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in files else target)
        graph[mod] = {d for d in deps if d in files and d != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle() -> None:
    found = cycles(module_graph(SRC))
    assert not found, f"import cycles: {found}"


def test_no_module_is_too_long() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_cycle_check_finds_cycles(tmp_path: Path) -> None:
    """The checker itself: a cycle through a module-level import and one through a
    function-level import are found; a type-only import makes no cycle."""
    pkg = tmp_path / "linguamesh"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub.b import B\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\n")
    (pkg / "f.py").write_text(
        "import typing\nif typing.TYPE_CHECKING:\n    from . import g\nelse:\n    from . import h\n"
    )
    (pkg / "g.py").write_text("from . import f\n")  # only f's type-only import points back
    (pkg / "h.py").write_text("from . import f\n")  # f's else branch imports h at run time
    (pkg / "c.py").write_text("def f():\n    from linguamesh import d\n")
    (pkg / "d.py").write_text("import linguamesh.c\n")
    (pkg / "e.py").write_text("from . import a\n")  # depends on a cycle, is not in one
    graph = module_graph(pkg)
    assert graph["linguamesh.sub.b"] == {"linguamesh.a"}
    assert graph["linguamesh.f"] == {"linguamesh.h"}
    assert cycles(graph) == [
        ["linguamesh.a", "linguamesh.sub.b"],
        ["linguamesh.c", "linguamesh.d"],
        ["linguamesh.f", "linguamesh.h"],
    ]
