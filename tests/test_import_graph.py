"""The import graph of core/ and cli/ has no cycles, counting imports inside functions too
(a lazy import still ties two modules together); `TYPE_CHECKING` imports do not count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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


def _environment_reads(tree: ast.AST) -> list[int]:
    """Lines that read an environment variable (`os.environ.get`, `os.getenv`, `os.environ[k]`,
    `k in os.environ`); passing the whole environment to a child is not a read of a variable."""

    def is_environ(node: ast.AST) -> bool:
        return ast.unparse(node) in ("os.environ", "environ")

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in (
            "os.environ.get",
            "os.getenv",
            "environ.get",
            "getenv",
        ):
            lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and is_environ(node.value):
            if isinstance(node.ctx, ast.Load):
                lines.append(node.lineno)
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            lines.append(node.lineno)
    return lines


def test_every_environment_variable_is_read_in_config() -> None:
    offenders = {}
    for name, (path, _) in _modules().items():
        if name == "torchshelf.config":
            continue
        found = _environment_reads(ast.parse(path.read_text()))
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}, "read environment variables in core/config.py"
    config = ROOT / "core" / "config.py"
    assert _environment_reads(ast.parse(config.read_text())), "the check finds reads"


def test_the_cli_imports_no_private_names_from_core() -> None:
    offenders = []
    for path in (ROOT / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torchshelf"):
                offenders += [
                    f"{path.name}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.endswith("__")
                ]
    assert offenders == []


def test_one_resolver_imports_files_and_module_attributes() -> None:
    """Only core/resolver.py imports a file by path; save, serve, bench and formats call it."""
    users = []
    for path in [*(ROOT / "core").rglob("*.py"), *(ROOT / "cli").glob("*.py")]:
        if "spec_from_file_location" in path.read_text() and path.name != "resolver.py":
            users.append(str(path.relative_to(ROOT)))
    assert users == []
    graph = import_graph()
    for user in ("sources", "formats", "serving.target", "bench.model"):
        assert "torchshelf.resolver" in graph[f"torchshelf.{user}"], user


def test_the_resolver_reads_files_and_modules_alike(tmp_path: Path) -> None:
    from torchshelf import resolver

    script = tmp_path / "thing.py"
    script.write_text("class Outer:\n    class Inner:\n        pass\n")
    obj, module, from_file = resolver.resolve(f"{script}:Outer.Inner")
    assert obj.__qualname__ == "Outer.Inner" and from_file and module.endswith("_thing")
    obj, module, from_file = resolver.resolve("collections:OrderedDict")
    assert obj.__name__ == "OrderedDict" and module == "collections" and not from_file
    assert resolver.import_class("collections:OrderedDict").__name__ == "OrderedDict"
    from torchshelf.errors import FormatError, UsageError

    with pytest.raises(UsageError, match="no attribute"):
        resolver.resolve("collections:Nope")
    with pytest.raises(FormatError):
        resolver.import_class(f"{script}:Outer")  # a stored class path never imports a file
