"""A griffe extension for the documentation site: read ``Example:`` sections as ``Examples:``.

The package's docstrings head their examples ``Example:`` (singular). griffe's Google parser knows
only ``Examples:`` as an examples section and renders ``Example:`` as an admonition of plain
Markdown, where a doctest line such as ``>>> x`` becomes a quote and ``['true']`` a broken link.
Renaming the header before parsing renders doctests as code and leaves fenced blocks as they are.
mkdocs.yml loads this file (``extensions: [scripts/griffe_examples.py]``).

It also refuses raw Sphinx roles (``:class:`X```, ``:func:`f```…), which mkdocstrings shows as
they are: the docstrings name code in backticks (`` `Job` ``, `` `prefect_comfy.models.Job` ``).
A raw role is logged as a warning on mkdocs' logger, so ``mkdocs build --strict`` (``make docs``)
fails, naming the object; ``tests/unit/test_docstring_roles.py`` checks the same without mkdocs.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import griffe

_HEADER = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
RAW_ROLE = re.compile(r":(?:py:)?[a-z]+:`[^`]+`")
"""A Sphinx role such as ``:class:`Job```: mkdocstrings renders it raw."""

logger = logging.getLogger("mkdocs.plugins.prefect_comfy.docstrings")


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section headers to ``Examples:`` in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: ARG002
        if obj.docstring is not None:
            obj.docstring.value = _HEADER.sub(r"\1Examples:", obj.docstring.value)
            for role in RAW_ROLE.findall(obj.docstring.value):
                logger.warning(
                    "%s: raw Sphinx role %s in its docstring; write the name in backticks",
                    obj.path,
                    role,
                )
