"""The ``prefect-comfy`` command line: ``emulator``, ``listen`` and ``demo``.

Each command's implementation lives beside what it runs. Only the command being run is imported
(``listen`` and ``demo`` import Prefect, which takes seconds), so ``prefect-comfy emulator`` starts
fast; ``--help`` with no command imports them all to list them.
"""

from __future__ import annotations

import importlib
import sys

import typer

COMMANDS: dict[str, tuple[str, str]] = {
    "emulator": (
        "prefect_comfy.emulator.cli",
        "Run the local emulator of the Comfy Cloud developer API.",
    ),
    "listen": ("prefect_comfy.listener.cli", "Forward Comfy events into Prefect as events."),
    "demo": (
        "prefect_comfy.demo",
        "Run the demo: the emulator, a local Prefect server and three flows.",
    ),
}


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The Typer app with the command named in ``argv`` registered (all of them without one)."""
    argv = sys.argv[1:] if argv is None else argv
    app = typer.Typer(
        name="prefect-comfy",
        help="Orchestrate ComfyUI and Comfy Cloud from Prefect.",
        no_args_is_help=True,
        add_completion=False,
    )
    # A callback keeps Typer in group mode even with one command registered.
    app.callback()(lambda: None)
    wanted = [argv[0]] if argv and argv[0] in COMMANDS else list(COMMANDS)
    for name in wanted:
        module, help_text = COMMANDS[name]
        app.command(name=name, help=help_text)(getattr(importlib.import_module(module), name))
    return app


def main() -> None:
    """Entry point of the ``prefect-comfy`` console script."""
    build_app()()
