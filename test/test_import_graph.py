"""No circle of imports in either package, and atdt_ros never imports atdt_train.

The graph is read from the source (every ``import`` and ``from ... import`` statement, at module
level or inside a function, since a function-level import is still a dependency), with relative
imports resolved, and searched for cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("atdt_ros", "atdt_train")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> project modules it imports (a package import counts as its __init__)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    root = ".".join(base[: len(base) - node.level + 1])
                    mod = f"{root}.{node.module}" if node.module else root
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in files:  # `from pkg import module` or a symbol
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_graph_reader_sees_relative_and_function_level_imports() -> None:
    graph = import_graph()
    assert "atdt_train.config" in graph["atdt_train.stages"]        # from .config import ...
    assert "atdt_train.lit" in graph["atdt_train.stages"]           # inside a function
    assert "atdt_ros.files" in graph["atdt_ros.artifact"]           # absolute
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles() -> None:
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_vehicle_side_never_imports_the_training_side() -> None:
    graph = import_graph()
    wrong = {m: sorted(e for e in edges if e.startswith("atdt_train"))
             for m, edges in graph.items() if m.startswith("atdt_ros")}
    assert not {m: e for m, e in wrong.items() if e}
