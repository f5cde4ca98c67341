"""``prefect-comfy emulator``: run the emulator in the foreground until interrupted.

Kept light at import time (``prefect-comfy --help`` imports this module): the emulator itself is
imported only when the command runs.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Annotated

import typer


def emulator(
    host: Annotated[
        str, typer.Option(help="Address to bind (loopback by default).", metavar="ADDRESS")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Port to bind; 0 picks a free one.", metavar="PORT")
    ] = 8765,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key",
            help="An API key to accept (repeat for several). Default: the COMFY_API_KEY variable.",
            metavar="KEY",
            show_default=False,
        ),
    ] = None,
    step_duration: Annotated[
        float,
        typer.Option(
            help="Seconds each execution step takes (a KSampler runs one per sampler step).",
            metavar="SECONDS",
        ),
    ] = 0.05,
    upload_duration: Annotated[
        float, typer.Option(help="Seconds an upload takes to turn ready.", metavar="SECONDS")
    ] = 0.1,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed for ids and images. Default: random.", metavar="SEED"),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(help="Jobs that run at the same time.", metavar="N")
    ] = 4,
) -> None:
    """Run the local emulator of the Comfy Cloud developer API until Ctrl-C or SIGTERM.

    It speaks the developer API (REST and the event stream) on loopback, so that flows, the listener
    and this command line can be tried and tested without an account: point COMFY_BASE_URL at the
    URL it prints and use one of its keys as COMFY_API_KEY.
    """
    from prefect_comfy_emulator.config import EmulatorConfig
    from prefect_comfy_emulator.server import EmulatorServer

    keys = list(api_key or [])
    if not keys and os.environ.get("COMFY_API_KEY"):
        keys = [os.environ["COMFY_API_KEY"]]
    if not keys:
        typer.echo("Give at least one --api-key (or set COMFY_API_KEY).", err=True)
        raise typer.Exit(2)
    config = EmulatorConfig(
        api_keys=keys, host=host, port=port, step_duration=step_duration,
        upload_duration=upload_duration, seed=seed, concurrency=concurrency,
    )  # fmt: skip
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with EmulatorServer(config) as server:
        typer.echo(f"Comfy emulator listening on {server.url} (API at {server.api_url})")
        typer.echo(f"Comfy API v2 face at {server.url}/api/v2 (COMFY_BASE_URL={server.v2_url})")
        typer.echo(f"{len(keys)} API key(s) accepted; test controls at {server.url}/_emulator/")
        while not stop.wait(0.5):
            pass
    typer.echo("Comfy emulator stopped")
