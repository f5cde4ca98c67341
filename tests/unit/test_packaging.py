"""Every third-party package the source imports is declared in pyproject.toml."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

from tests.support.source import parse

ROOT = Path(__file__).resolve().parents[2]

IMPORT_NAMES = {
    "pydantic_settings": "pydantic-settings",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "comfy_sdk": "comfy-sdk",
}
"""Import name -> distribution name, where they differ."""


def _imported(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {
        n
        for n in names
        if n not in sys.stdlib_module_names and n not in {"prefect_comfy", "tests", "benchmarks"}
    }


def _declared(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


OPTIONAL = {"prefect_comfy_emulator": "emulator"}
"""Imports of prefect_comfy that an extra brings (imported lazily, by the CLI's demo and emulator)."""


def test_every_third_party_import_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _declared(project["dependencies"])
    extras = project["optional-dependencies"]
    dev = runtime | _declared(extras["dev"])
    imported = _imported(ROOT / "prefect_comfy") - {"prefect_comfy_emulator"}
    missing = {IMPORT_NAMES.get(n, n) for n in imported} - runtime
    assert not missing, f"imported by prefect_comfy but not in dependencies: {sorted(missing)}"
    for module, extra in OPTIONAL.items():
        assert module.replace("_", "-") in _declared(extras[extra]), f"{extra} extra lacks {module}"
    local = {p.stem for d in ("flows", "benchmarks", "scripts") for p in (ROOT / d).glob("*.py")}
    local.add("prefect_comfy_emulator")
    test_imports = (_imported(ROOT / "tests") | _imported(ROOT / "benchmarks")) - local
    missing = {IMPORT_NAMES.get(n, n) for n in test_imports} - dev
    assert not missing, f"imported by tests or benchmarks but not declared: {sorted(missing)}"


def _oldest_python() -> tuple[int, int]:
    """The oldest Python ``requires-python`` admits (its ``>=3.N`` bound)."""
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    found = re.search(r">=\s*3\.(\d+)", spec)
    assert found, f"requires-python {spec!r} has no >=3.N lower bound"
    return 3, int(found[1])


def test_requires_python_admits_no_python_a_dependency_refuses() -> None:
    # A bound lower than a dependency's makes uv's universal resolution fail (`uv run` said "No
    # solution found" for Python 3.10, which Prefect 3.9 does not support).
    from importlib.metadata import distribution

    oldest = _oldest_python()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    refusing = {}
    for name in _declared(project["dependencies"]):
        needs = distribution(name).metadata.get("Requires-Python") or ""
        bound = re.search(r">=\s*3\.(\d+)", needs)
        if bound and (3, int(bound[1])) > oldest:
            refusing[name] = needs
    assert not refusing, f"requires-python admits 3.{oldest[1]}, which these refuse: {refusing}"


def test_the_docs_and_ruff_say_the_same_oldest_python() -> None:
    major, minor = _oldest_python()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["ruff"]["target-version"] == f"py{major}{minor}"
    for page in ("README.md", "docs/quickstart.md"):
        text = (ROOT / page).read_text(encoding="utf-8")
        said = set(re.findall(r"Python (3\.\d+)\+", text))
        assert said == {f"{major}.{minor}"}, f"{page} says Python {said}"


def test_the_emulator_is_its_own_distribution_and_declares_what_it_imports() -> None:
    """The runtime wheel carries no web server: starlette and uvicorn belong to the emulator."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not {"starlette", "uvicorn"} & _declared(project["dependencies"])
    emulator = tomllib.loads((ROOT / "emulator" / "pyproject.toml").read_text())["project"]
    assert emulator["name"] == "prefect-comfy-emulator"
    declared = _declared(emulator["dependencies"])
    imported = _imported(ROOT / "emulator" / "prefect_comfy_emulator") - {"prefect_comfy_emulator"}
    missing = {IMPORT_NAMES.get(n, n) for n in imported} - declared - {"prefect_comfy"}
    assert not missing, f"imported by the emulator but not in its dependencies: {sorted(missing)}"
    assert "prefect-comfy" in declared
