"""The ``prefect-comfy`` command line: ``emulator``, ``listen`` and ``demo``.

Each command's implementation lives beside what it runs and is imported only when that command runs,
so ``prefect-comfy --help`` stays fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="prefect-comfy",
    help="Orchestrate ComfyUI and Comfy Cloud from Prefect.",
    no_args_is_help=True,
    add_completion=False,
)


def _register() -> None:
    from prefect_comfy.emulator.cli import emulator

    app.command(help="Run the local emulator of the Comfy Cloud developer API.")(emulator)
    try:
        from prefect_comfy.listener_cli import listen
    except ImportError:  # the listener arrives with its own module
        pass
    else:
        app.command(help="Forward Comfy events into Prefect as events.")(listen)
    try:
        from prefect_comfy.demo import demo
    except ImportError:
        pass
    else:
        app.command(help="Run the demo: the emulator, a local Prefect server and a flow.")(demo)


def main() -> None:
    """Entry point of the ``prefect-comfy`` console script."""
    _register()
    app()
