"""Parse a Python source file for the tests that read the package's code (architecture, packaging,
docstring roles).

CPython 3.11 keeps the AST constructor's recursion depth per interpreter, not per thread, so an
``ast.parse`` while another thread parses (Prefect's and the waiting layer's threads outlive some
unit tests) can fail with ``SystemError: AST constructor recursion depth mismatch``
(python/cpython#106905, fixed in 3.12). The parse is retried then: the source did not change.
"""

from __future__ import annotations

import ast
from pathlib import Path

ATTEMPTS = 5


def parse(source: str | Path) -> ast.Module:
    """The module's AST; ``source`` is its text or its path."""
    text = source.read_text(encoding="utf-8") if isinstance(source, Path) else source
    for attempt in range(ATTEMPTS):
        try:
            return ast.parse(text)
        except SystemError as exc:  # the interpreter's bug above, never the source's
            if "recursion depth mismatch" not in str(exc) or attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")
