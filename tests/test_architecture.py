"""The shape of the code: no import circles, `rlhf/` below `rayjobs/` and `annotator/`, small modules.

The import graph is read from the source (ast), not by importing: every `import` and `from ...
import` anywhere in a module counts, inside functions too (a lazy import still ties the modules
together), except those under `if TYPE_CHECKING:`. An edge goes from a module to the module it
names: `import rlhf.env` and `from rlhf.env import CropEnv` give -> rlhf.env, `from rlhf import env`
gives -> rlhf.env (a submodule), `from rlhf import CropEnv` gives -> rlhf (the package's __init__,
whose own imports are its edges). Parent packages that Python runs on the way are not counted: an
__init__ that re-exports its submodules would otherwise put every module in one circle with it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("rlhf", "rayjobs", "annotator")
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Module name -> file, for every .py under the project packages."""
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in the tree, at any depth, except under `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is a project module (None outside the project)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    """module -> {imported project module: line of the first such import}, and the module files."""
    modules = project_modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:  # a submodule if it is one, else a name in `base`
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                known = _known(target, modules)
                if known is not None and known != name:
                    edges.setdefault(known, node.lineno)
        graph[name] = edges
    return graph, modules


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a path
    a -> b -> ... -> a through that component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_in(graph, set(c)) for c in sorted(components)]


def _cycle_in(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in component:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(component)


def _describe(graph: dict[str, dict[str, int]], modules: dict[str, Path], cycle: list[str]) -> str:
    steps = [f"    {a} -> {b}  ({modules[a].relative_to(REPO)}:{graph[a][b]})"
             for a, b in zip(cycle[:-1], cycle[1:], strict=True)]
    return "  " + " -> ".join(cycle) + "\n" + "\n".join(steps)


def test_no_import_cycles():
    graph, modules = import_graph()
    cycles = import_cycles(graph)
    if cycles:
        pytest.fail(f"{len(cycles)} import circle(s):\n" + "\n".join(_describe(graph, modules, c) for c in cycles),
                    pytrace=False)


def test_rlhf_never_imports_the_commands_or_the_app():
    graph, modules = import_graph()
    bad = [f"{modules[a].relative_to(REPO)}:{line} imports {b}"
           for a, edges in sorted(graph.items()) if a.split(".")[0] == "rlhf"
           for b, line in sorted(edges.items()) if b.split(".")[0] in ("rayjobs", "annotator")]
    if bad:
        pytest.fail("rlhf/ must not import rayjobs/ or annotator/:\n  " + "\n  ".join(bad), pytrace=False)


def test_no_product_module_over_500_lines():
    sizes = {path: len(path.read_text().splitlines()) for path in project_modules().values()}
    big = sorted((n, p) for p, n in sizes.items() if n > MAX_LINES)
    if big:
        pytest.fail(f"{len(big)} module(s) over {MAX_LINES} lines:\n  " + "\n  ".join(
            f"{p.relative_to(REPO)}: {n} lines" for n, p in reversed(big)), pytrace=False)


def test_the_graph_reader_on_known_edges():
    """The reader itself: function-level and relative imports count; TYPE_CHECKING ones do not."""
    graph, _ = import_graph()
    assert "rlhf.store_sqlite" in graph["rlhf.store"]
    assert "rlhf.pairs" in graph["rlhf.store"]
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\nelse:\n    import b\n"
                     "def f():\n    from . import c\n")
    names = [getattr(n, "module", None) or n.names[0].name for n in _imports(tree)]
    assert names == ["typing", "b", "c"]
    assert import_cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b": 1}, "b": {}}) == []


def test_the_public_api_resolves_and_stays_lazy():
    """Every name `rlhf` exports resolves, and importing a light module does not load torch or Ray."""
    import subprocess
    import sys

    import rlhf

    for name in rlhf.__all__:
        assert getattr(rlhf, name) is not None, name
    code = "import sys, rlhf.pairs, rlhf.store; print(sorted({'torch', 'ray', 'timm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout
