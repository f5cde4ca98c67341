"""A griffe extension for the documentation site: read ``Example:`` sections as ``Examples:``.

The package's docstrings head their examples ``Example:`` (singular). griffe's Google parser knows
only ``Examples:`` as an examples section and renders ``Example:`` as an admonition of plain
Markdown, where a doctest line such as ``>>> x`` becomes a quote and ``['true']`` a broken link.
Renaming the header before parsing renders doctests as code and leaves fenced blocks as they are.
mkdocs.yml loads this file (``extensions: [scripts/griffe_examples.py]``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADER = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section headers to ``Examples:`` in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: ARG002
        if obj.docstring is not None:
            obj.docstring.value = _HEADER.sub(r"\1Examples:", obj.docstring.value)
