"""The shape of the package, as a check anyone can run (issues 8 and 18).

- no import circles, lazy (function-level) imports included;
- no module much past 500 lines (a hint to look for a seam; the limit here is :data:`MAX_LINES`);
- every module belongs to a named layer, and imports point one way: core -> transport -> backends ->
  waiting -> Prefect layer (``orchestration/``) -> listener/CLI (:data:`LAYERS`);
- the Prefect layer sees a server only through ``backends.base`` and ``backends.registry``, and
  neither do the waiting layer, the listener or the CLI: what is particular to one kind of server
  lives in its package;
- at most six top-level modules: everything else lives in a room;
- every ``COMFY_*`` variable is read in ``settings.py`` (and documented there): no other module
  reads the environment for one (:data:`ENVIRONMENT_READERS` names the reads that remain, and why).

``docs/architecture.md`` draws the same picture in words.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.source import parse

PACKAGE = Path(__file__).resolve().parents[2] / "prefect_comfy"
MAX_LINES = 500
"""The most lines a module may have before it must be looked at for a seam."""

CORE = {"settings", "exceptions", "models", "redaction", "bounded", "workflows"}
"""Top-level modules and packages below everything else (``workflows`` is pure: formats, catalog,
conversion)."""
LAYERS = {"core": 0, "transport": 1, "backends": 2, "waiting": 3, "prefect": 4, "outer": 5}
"""Rank of each layer: a module may import from its own rank or below, never above."""
ROOMS = {"transport": "transport", "backends": "backends", "waiting": "waiting"}
PREFECT = {"orchestration"}
"""The Prefect layer: tasks, flows, the job block, the sensor, suspend, results, artifacts,
triggers, and its events sub-room."""
OUTER = {"listener", "cli", "__main__"}
"""Packages and modules above the Prefect layer: the listener and the CLI (the demo is in it)."""
SERVER_INTERFACE = {"prefect_comfy.backends.base", "prefect_comfy.backends.registry"}
KIND_BLIND = {"waiting", "prefect", "outer"}
"""Layers that must not name a kind of server: they see one only through the interface."""
MAX_TOP_LEVEL_MODULES = 6
KNOWN_KIND_IMPORTS: set[str] = set()
"""Imports of a kind's package from above the backends still to be paid (none): the check fails on a
new one, and on one paid but still listed."""


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
    for node in ast.walk(parse(path)):
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
    """The layer of a dotted module name of this package (``unplaced`` when it has none)."""
    first = module.split(".")[1]
    if first in CORE:
        return "core"
    if first in ROOMS:
        return ROOMS[first]
    if first in PREFECT:
        return "prefect"
    if first in OUTER:
        return "outer"
    return "unplaced"


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


def test_every_module_belongs_to_a_named_layer() -> None:
    unplaced = sorted(name for name in _modules() if layer_of(name) == "unplaced")
    assert not unplaced, f"put these in a room (see docs/architecture.md): {unplaced}"


def test_at_most_six_top_level_modules() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"too many top-level modules: {top}"


def test_no_module_much_past_500_lines() -> None:
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
        if LAYERS.get(layer_of(target), 9) > LAYERS.get(layer_of(name), -1)
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


def _kind_package(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) > 3 and parts[1] == "backends":
        return ".".join(parts[:3])
    return None


def test_only_the_backends_name_a_kind_of_server() -> None:
    """A fourth kind of server is one new package: nothing above the backends names one."""
    found = {
        f"{name} imports {target}"
        for name, targets in _graph().items()
        if layer_of(name) in KIND_BLIND
        for target in targets
        if _kind_package(target)
    }
    wrong = sorted(found - KNOWN_KIND_IMPORTS)
    assert not wrong, "go through the backend interface or its Capabilities:\n" + "\n".join(wrong)
    paid = sorted(KNOWN_KIND_IMPORTS - found)
    assert not paid, f"paid debt: remove these from KNOWN_KIND_IMPORTS: {paid}"


def test_no_test_module_imports_another() -> None:
    """What two test modules share lives in tests/support/ (and fixtures in a conftest)."""
    tests = PACKAGE.parent / "tests"
    wrong = sorted(
        f"{path.relative_to(tests.parent)} imports {node.module}"
        for path in tests.rglob("*.py")
        for node in ast.walk(parse(path))
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith(("tests.unit", "tests.integration", "tests.conftest"))
    )
    assert not wrong, "move what is shared into tests/support/:\n" + "\n".join(wrong)


ENVIRONMENT_READERS = {
    "prefect_comfy.cli.demo": "hands the whole environment on to the demo's Prefect server and "
    "worker (``{**os.environ, ...}``): a copy for a child process, not a setting read here",
}
"""Modules outside ``settings.py`` allowed to read the environment other than by a literal name
that is not ``COMFY_*`` (a write, such as ``DO_NOT_TRACK`` for ``--no-prefect``, is no read)."""


def _environment_reads(tree: ast.AST) -> list[tuple[int, ast.expr | None]]:
    """Each read of ``os.environ`` / ``os.getenv`` in a module: ``(line, the name read)``, the name
    ``None`` when the read is not of one name (the whole mapping passed on, a name in a variable
    is still an expression)."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def is_environ(node: ast.AST, attr: str) -> bool:
        if isinstance(node, ast.Attribute):
            return node.attr == attr and isinstance(node.value, ast.Name) and node.value.id == "os"
        return isinstance(node, ast.Name) and node.id == attr

    reads: list[tuple[int, ast.expr | None]] = []
    for node in ast.walk(tree):
        parent = parents.get(node)
        if is_environ(node, "getenv") and isinstance(parent, ast.Call) and parent.func is node:
            reads.append((node.lineno, parent.args[0] if parent.args else None))
        elif not is_environ(node, "environ") or isinstance(parent, ast.ImportFrom):
            continue
        elif isinstance(parent, ast.Subscript) and parent.value is node:
            if not isinstance(parent.ctx, (ast.Store, ast.Del)):  # a write is not a read
                reads.append((node.lineno, parent.slice))
        elif isinstance(parent, ast.Attribute) and parent.attr in ("get", "__getitem__"):
            call = parents.get(parent)
            key = call.args[0] if isinstance(call, ast.Call) and call.args else None
            reads.append((node.lineno, key))
        elif isinstance(parent, ast.Attribute) and parent.attr in ("setdefault", "update", "pop"):
            continue  # writes
        else:
            reads.append((node.lineno, None))
    return reads


def _comfy_reads(tree: ast.AST) -> list[int]:
    """Lines that read the environment other than by a literal name that is not ``COMFY_*``."""
    return sorted(
        line
        for line, key in _environment_reads(tree)
        if not (
            isinstance(key, ast.Constant)
            and isinstance(key.value, str)
            and not key.value.startswith("COMFY_")
        )
    )


def test_the_environment_check_finds_a_comfy_read() -> None:
    source = (
        "import os\nfrom os import environ\nNAME = 'COMFY_X'\n"
        "a = os.environ.get('COMFY_A')\nb = os.getenv('COMFY_B', '')\nc = environ['COMFY_C']\n"
        "d = os.environ.get(NAME)\ne = dict(os.environ)\n"
        "os.environ['PREFECT_HOME'] = 'x'\nos.environ.setdefault('DO_NOT_TRACK', '1')\n"
        "f = os.environ.get('PREFECT_API_URL')\n"
    )
    assert _comfy_reads(parse(source)) == [4, 5, 6, 7, 8]


def test_only_settings_reads_comfy_variables() -> None:
    """Every ``COMFY_*`` variable is read (and documented) in ``prefect_comfy/settings.py``."""
    found = {}
    for name, path in _modules().items():
        if name == "prefect_comfy.settings":
            continue
        lines = _comfy_reads(parse(path))
        if lines and name not in ENVIRONMENT_READERS:
            found[name] = lines
    assert not found, (
        "read COMFY_* variables through prefect_comfy.settings (ComfySettings, or "
        f"environment_value for one read on its own), not os.environ: {found}"
    )
    stale = {
        name
        for name in ENVIRONMENT_READERS
        if name not in _modules() or not _comfy_reads(parse(_modules()[name]))
    }
    assert not stale, f"allowed environment readers that no longer read it: {stale}"


def test_every_comfy_variable_named_in_the_package_is_documented_in_settings() -> None:
    """A ``COMFY_*`` name the code uses as a value (a backend's key variables, a constant) is one of
    `prefect_comfy.settings.variables` (the fields of ComfySettings and SEPARATE_VARIABLES)."""
    from prefect_comfy.settings import variables

    known = variables()
    unknown = {}
    for name, path in _modules().items():
        tree = parse(path)
        exported = {  # names in __all__ are Python names, not variables
            id(node)
            for assign in ast.walk(tree)
            if isinstance(assign, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in assign.targets)
            for node in ast.walk(assign.value)
        }
        for node in ast.walk(tree):
            if (
                id(node) not in exported
                and isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.startswith("COMFY_")
                and node.value.replace("_", "").isalnum()
                and node.value.isupper()
                and node.value != "COMFY_"
                and node.value not in known
            ):
                unknown.setdefault(name, []).append(node.value)
    assert not unknown, f"document these variables in prefect_comfy/settings.py: {unknown}"
