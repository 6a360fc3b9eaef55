"""The import graph of core/ and cli/ has no cycles, counting imports inside functions too
(a lazy import still ties two modules together); `TYPE_CHECKING` imports do not count."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"torchshelf": ROOT / "core", "torchshelf.cli": ROOT / "cli"}


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for pkg, base in PACKAGES.items():
        for path in base.rglob("*.py"):
            parts = [p for p in path.relative_to(base).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = (path, path.name == "__init__.py")
    return mods


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_nodes(tree)
        here = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                base = (
                    here.split(".")[: len(here.split(".")) - node.level + 1] if node.level else []
                )
                target = ".".join([*base, *([node.module] if node.module else [])])
                found = [target] if node.module else []
                found += [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in found if t in mods and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_finds_a_known_edge() -> None:
    graph = import_graph()
    assert "torchshelf.store" in graph["torchshelf.lifecycle"]
    assert "torchshelf.cli.remote_cmds" in graph["torchshelf.cli.store_cmds"]


def test_no_import_cycles_in_core_or_cli() -> None:
    assert cycles(import_graph()) == []


def test_core_never_imports_the_cli() -> None:
    graph = import_graph()
    offenders = {
        m: sorted(t for t in deps if t.startswith("torchshelf.cli"))
        for m, deps in graph.items()
        if not m.startswith("torchshelf.cli") and m != "torchshelf.__main__"
    }
    assert {m: d for m, d in offenders.items() if d} == {}
