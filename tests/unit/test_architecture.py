"""The shape of the package, as a check anyone can run (issue 8).

- no import circles, lazy (function-level) imports included;
- no module much past 400 lines (the limit here is :data:`MAX_LINES`);
- imports point one way: core -> transport -> backends -> waiting -> Prefect layer -> listener/CLI
  (:data:`LAYERS`);
- the Prefect layer sees a server only through ``backends.base`` and ``backends.registry``.

``docs/architecture.md`` draws the same picture in words.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "prefect_comfy"
MAX_LINES = 450
"""The most lines a module may have (the house style says "about 400")."""

CORE = {
    "settings",
    "exceptions",
    "models",
    "redaction",
    "events",
    "bounded",
    "threads",
    "workflows",
}
"""Top-level modules and packages below everything else (`workflows` is pure: formats, catalog, conversion)."""
LAYERS = {"core": 0, "transport": 1, "backends": 2, "waiting": 3, "prefect": 4, "outer": 5}
"""Rank of each layer: a module may import from its own rank or below, never above."""
OUTER = {"listener", "cli", "demo", "emulator", "__main__"}
"""Packages and modules above the Prefect layer: the listener, the CLI, the demo, the emulator."""
SERVER_INTERFACE = {"prefect_comfy.backends.base", "prefect_comfy.backends.registry"}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name; package faces (``__init__``) hand names on only."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py":
            found[".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source, lazily or not."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(name.split(".")[: -node.level] + ([base] if base else []))
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        targets.update(c for c in candidates if c in modules and c != name)
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> str:
    """The layer of a dotted module name of this package."""
    first = module.split(".")[1]
    if first in CORE:
        return "core"
    if first in ("transport", "backends", "waiting"):
        return first
    if first in OUTER:
        return "outer"
    return "prefect"


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_circle_finder_finds_a_circle() -> None:
    """The check itself can fail: a lazy import back is a circle."""
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_lazy_imports_included() -> None:
    assert _circles(_graph()) == []


def test_no_module_much_past_400_lines() -> None:
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these along a seam (one concern per module): {long}"


def test_imports_point_one_way() -> None:
    wrong = sorted(
        f"{name} ({layer_of(name)}) imports {target} ({layer_of(target)})"
        for name, targets in _graph().items()
        for target in targets
        if LAYERS[layer_of(target)] > LAYERS[layer_of(name)]
    )
    assert not wrong, "imports must point core -> transport -> backends -> waiting -> Prefect " + (
        "layer -> listener/CLI:\n" + "\n".join(wrong)
    )


def test_the_prefect_layer_imports_no_backend_module() -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in _graph().items()
        if layer_of(name) == "prefect"
        for target in targets
        if layer_of(target) == "backends" and target not in SERVER_INTERFACE
    )
    assert not wrong, "the Prefect layer sees servers only through the interface:\n" + "\n".join(
        wrong
    )
