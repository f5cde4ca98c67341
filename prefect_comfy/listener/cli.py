"""``prefect-comfy listen``: forward Comfy events into Prefect until SIGTERM or Ctrl-C.

Example:
    $ export PREFECT_API_URL=http://127.0.0.1:4200/api
    $ COMFY_API_KEY=comfyui-... prefect-comfy listen --pattern 'job.*' --pattern input.ready
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated, Any

import typer

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def listen(
    block: Annotated[
        str | None,
        typer.Option(
            "--block",
            "-b",
            metavar="NAME",
            help="Name of a saved ComfyCloudCredentials, ComfyUIServer or ComfyV2Credentials block. Default: COMFY_API_KEY and "
            "COMFY_BASE_URL from the environment.",
            show_default=False,
        ),
    ] = None,
    pattern: Annotated[
        list[str] | None,
        typer.Option(
            "--pattern",
            "-p",
            metavar="PATTERN",
            help="Event pattern to forward: '*', 'job.*' or a name such as input.ready "
            "(repeat for several). Default: '*'.",
            show_default=False,
        ),
    ] = None,
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            "--heartbeat-interval",
            metavar="S",
            help="Seconds between comfy.listener.heartbeat events; 0 for none.",
            min=0,
        ),
    ] = 30.0,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            metavar="NAME",
            help="Stable id of the heartbeat resource comfy.listener.<name>. Default: "
            "<hostname>-<pid>.",
            show_default=False,
        ),
    ] = None,
    events_per_second: Annotated[
        float | None,
        typer.Option(
            "--events-per-second",
            metavar="N",
            help="Most events a second sent to Prefect (outcomes first, progress coalesced); 0 for "
            "no limit. Default: COMFY_LISTENER_EVENTS_PER_SECOND, else 300.",
            min=0,
            show_default=False,
        ),
    ] = None,
    cursor: Annotated[
        str,
        typer.Option(
            "--cursor",
            metavar="WHERE",
            help="Where to keep what is in flight across restarts: a file path, "
            "variable:NAME (a Prefect variable) or none. Default: COMFY_LISTENER_CURSOR, else a "
            "state file under $PREFECT_HOME/comfy-listener/.",
            show_default=False,
        ),
    ] = "",
    no_cancel_suspended: Annotated[
        bool,
        typer.Option(
            "--no-cancel-suspended",
            help="Leave the Comfy jobs of suspended flow runs that are cancelled running (by "
            "default the listener cancels them: no process of such a run exists to do it).",
        ),
    ] = False,
    _cancel_suspended: Annotated[
        bool, typer.Option("--cancel-suspended", hidden=True, help="The default.")
    ] = False,  # still accepted; one flag, not a --x/--no-x pair, keeps the help 80 columns wide
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level",
            metavar="LEVEL",
            help="Level of the listener's own log lines (DEBUG logs every forwarded event id).",
        ),
    ] = "INFO",
) -> None:
    """Forward Comfy events into Prefect as events (comfy.<event>), until SIGTERM or Ctrl-C."""
    from prefect_comfy.exceptions import ComfyConfigError, WebSocketAuthError
    from prefect_comfy.listener.sender import require_prefect_api_url

    _configure_logging(log_level)
    try:
        api_url = require_prefect_api_url()
    except ComfyConfigError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    logging.getLogger("prefect_comfy.listener.forwarder").info(
        "sending events to Prefect at %s", api_url
    )
    try:
        stats = asyncio.run(
            _listen(
                block,
                tuple(pattern or ("*",)),
                heartbeat_interval=heartbeat_interval,
                listener_id=name,
                events_per_second=events_per_second,
                cursor=cursor,
                cancel_suspended=not no_cancel_suspended,
            )
        )
    except ComfyConfigError as exc:  # also a --block that no saved block has: one line, exit 2
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    except WebSocketAuthError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(code=3) from None
    except KeyboardInterrupt:  # a second Ctrl-C during the drain
        raise typer.Exit(code=130) from None
    typer.echo(
        f"listener stopped: received={stats.received} reconciled={stats.reconciled} "
        f"forwarded={stats.forwarded} connects={stats.connects} coalesced={stats.coalesced} "
        f"caught_up={stats.caught_up} already_stored={stats.already_stored}",
        err=True,
    )


async def _listen(block: str | None, patterns: tuple[str, ...], **options: Any) -> Any:
    """Run the listener on the backend of ``block`` (or the environment), closed after."""
    from prefect_comfy.cli.connect import backend_for
    from prefect_comfy.listener.run import run_listener

    async with await backend_for(block) as backend:
        return await run_listener(backend, patterns, **options)


def _configure_logging(level: str) -> None:
    """Log the package's own lines at ``level`` (never the websockets/httpx debug lines)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    package = logging.getLogger("prefect_comfy")
    package.addHandler(handler)
    package.setLevel(level.upper())
    package.propagate = False
