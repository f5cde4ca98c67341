"""No docstring holds a raw Sphinx role (issue 19, item 14).

mkdocstrings renders Google docstrings as Markdown, where ``:class:`Job``` shows as it is typed:
the API reference showed 59 of them. Docstrings name code in backticks instead. The docs build
fails on a raw role too (``scripts/griffe_examples.py``); this checks every docstring of the
package and the emulator, including those the reference does not show, without mkdocs.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from tests.support.source import parse

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "prefect_comfy", ROOT / "emulator" / "prefect_comfy_emulator"]


def _raw_role():
    spec = importlib.util.spec_from_file_location(
        "griffe_examples", ROOT / "scripts/griffe_examples.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RAW_ROLE


def docstrings(path: Path) -> list[tuple[int, str]]:
    """Every docstring of a module, attribute docstrings (a string statement) included."""
    tree = parse(path)
    return [
        (node.lineno, node.value.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    ]


def test_no_docstring_has_a_raw_sphinx_role() -> None:
    raw_role = _raw_role()
    found = [
        f"{path.relative_to(ROOT)}:{line}: {role}"
        for source in SOURCES
        for path in sorted(source.rglob("*.py"))
        for line, text in docstrings(path)
        for role in raw_role.findall(text)
    ]
    assert not found, "raw Sphinx roles (write names in backticks):\n" + "\n".join(found)


def test_the_check_finds_a_raw_role() -> None:
    raw_role = _raw_role()
    assert raw_role.findall("See :class:`~prefect_comfy.models.Job` and :py:func:`f`.") == [
        ":class:`~prefect_comfy.models.Job`",
        ":py:func:`f`",
    ]
    assert not raw_role.findall("See `Job` and ``x: int``.")
