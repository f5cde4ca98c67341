"""Help screens that name what a value is (``--out DIR``), never its Python type (``<str>``).

Typer prints a parameter's Python type (``<bool>``, ``<list[str]>``) unless it has a metavar. The
command and group classes here give every parameter one before a help screen is drawn: flags get an
empty one, value options and arguments their upper-cased name, unless the code set a better one.
"""

from __future__ import annotations

import inspect
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup


def _no_type(ctx: Any) -> None:
    return None


def unwrap(text: str | None) -> str | None:
    """A docstring with each paragraph on one line, so that the help screen wraps it itself."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def _name_parameters(command: Any, ctx: Any) -> None:
    for param in command.get_params(ctx):
        if isinstance(param, TyperArgument):  # its metavar is its name: no type column
            param.display_type_rich = _no_type
        if param.metavar is not None:
            continue
        is_flag = getattr(param, "is_flag", False) or getattr(param, "count", False)
        param.metavar = "" if is_flag else (param.name or "value").upper()


class PlainCommand(TyperCommand):
    """A command whose help shows metavars instead of Python types."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _name_parameters(self, ctx)
        super().format_help(ctx, formatter)


class PlainGroup(TyperGroup):
    """A group whose help shows metavars instead of Python types."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _name_parameters(self, ctx)
        super().format_help(ctx, formatter)


def group(name: str, help: str) -> typer.Typer:
    """A sub-command group (``jobs``, ``upload``, ``blocks``) that lists its commands when bare."""
    return typer.Typer(
        name=name,
        help=help,
        cls=PlainGroup,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )


def command(app: typer.Typer, name: str) -> Any:
    """``app.command(name)`` with the plain help screen and the docstring as its help."""

    def register(function: Any) -> Any:
        app.command(name, cls=PlainCommand, help=unwrap(function.__doc__))(function)
        return function

    return register
