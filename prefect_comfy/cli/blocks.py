"""``prefect-comfy blocks create cloud|comfyui|v2 NAME``: save credentials as a Prefect block.

The API key comes from ``COMFY_API_KEY`` (``COMFY_V2_API_KEY`` first for v2) when it is set, else
from a prompt that does not echo it. It is saved as a secret and never printed. Before saving, one
cheap authenticated read checks the key and the URL against the server (``--no-check`` skips it).
The block is saved on the Prefect server that ``PREFECT_API_URL`` (or the active Prefect profile)
names; every command then takes ``--block NAME``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from prefect_comfy.cli.connect import prefect_api_url
from prefect_comfy.cli.errors import PrefectUnavailable, UsageProblem
from prefect_comfy.cli.help import command, group
from prefect_comfy.settings import environment_value, environment_variable

app = group("blocks", "Save Comfy credentials as a Prefect block.")
create = group(
    "create", "Save a block: Comfy Cloud credentials, a ComfyUI server or Comfy API v2 credentials."
)
app.add_typer(create, name="create")

NameArgument = Annotated[
    str, typer.Argument(help="Name to save the block under.", metavar="NAME", show_default=False)
]
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Replace a block of that name and type.")
]
NoCheckOption = Annotated[
    bool,
    typer.Option(
        "--no-check", help="Save without first checking the key and URL against the server."
    ),
]


@command(create, "cloud")
def create_cloud(
    name: NameArgument,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url",
            help="Origin of the developer API. Default: COMFY_BASE_URL, or "
            "https://cloud.comfy.org when the block is used.",
            metavar="URL",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    overwrite: OverwriteOption = False,
    no_check: NoCheckOption = False,
) -> None:
    """Save a ComfyCloudCredentials block: an API key (asked for, or COMFY_API_KEY) and a URL."""
    base_url = base_url or environment_value("COMFY_BASE_URL")
    if base_url is not None:
        _check_url(base_url, "--base-url")
    api_url = _require_prefect()
    key = _api_key(required=True)
    from prefect_comfy import ComfyCloudCredentials

    block = ComfyCloudCredentials(api_key=key, base_url=base_url)
    where = base_url or "https://cloud.comfy.org"
    if not no_check:
        _check_server(block, where)
    _save(block, name, overwrite)
    typer.echo(f'Saved ComfyCloudCredentials block "{name}" ({where}) on {api_url}.')
    typer.echo(f"Use it with --block {name}, or ComfyCloudCredentials.load({name!r}).")


def _check_url(url: str, option: str) -> None:
    """A URL a block can use (``http(s)://host[:port]``), checked before anything is saved."""
    from prefect_comfy.exceptions import ComfyConfigError
    from prefect_comfy.transport.origins import normalize_origin

    try:
        normalize_origin(url)
    except ComfyConfigError as exc:
        raise UsageProblem(f"{option}: {exc}; nothing was saved") from None


@command(create, "comfyui")
def create_comfyui(
    name: NameArgument,
    url: Annotated[
        str, typer.Option("--url", help="The ComfyUI server's origin.", metavar="URL")
    ] = "http://127.0.0.1:8188",
    with_key: Annotated[
        bool,
        typer.Option(
            "--with-key",
            help="Also save an API key (Comfy Cloud's ComfyUI-compatible API): asked for, or "
            "COMFY_API_KEY.",
        ),
    ] = False,
    overwrite: OverwriteOption = False,
    no_check: NoCheckOption = False,
) -> None:
    """Save a ComfyUIServer block: where a self-hosted ComfyUI is (and a key, with --with-key)."""
    _check_url(url, "--url")
    api_url = _require_prefect()
    key = _api_key(required=True) if with_key else None
    from prefect_comfy import ComfyUIServer

    block = ComfyUIServer(url=url, api_key=key)
    if not no_check:
        _check_server(block, url)
    _save(block, name, overwrite)
    typer.echo(f'Saved ComfyUIServer block "{name}" ({url}) on {api_url}.')
    typer.echo(f"Use it with --block {name}, or ComfyUIServer.load({name!r}).")


@command(create, "v2")
def create_v2(
    name: NameArgument,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The Comfy API v2 server's origin: Comfy Cloud, a deployment or a "
            "comfy-api-proxy. Default: COMFY_V2_BASE_URL, or https://cloud.comfy.org.",
            metavar="URL",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    overwrite: OverwriteOption = False,
    no_check: NoCheckOption = False,
) -> None:
    """Save a ComfyV2Credentials block: a URL and a key (asked for, or COMFY_V2_API_KEY)."""
    url = url or environment_value("COMFY_V2_BASE_URL")
    if url is not None:
        _check_url(url, "--url")
    api_url = _require_prefect()
    key = _api_key(required=False, env=("COMFY_V2_API_KEY", "COMFY_API_KEY"))
    from prefect_comfy import ComfyV2Credentials

    block = ComfyV2Credentials(endpoint=url, api_key=key)
    where, _ = block.resolved()  # the URL, else COMFY_V2_BASE_URL, else Comfy Cloud
    if not no_check:
        _check_server(block, where)
    _save(block, name, overwrite)
    typer.echo(f'Saved ComfyV2Credentials block "{name}" ({where}) on {api_url}.')
    typer.echo(f"Use it with --block {name}, or ComfyV2Credentials.load({name!r}).")


def _check_server(block: Any, where: str) -> None:
    """One cheap authenticated read with the block, before it is saved (``--no-check`` skips it)."""
    from prefect_comfy.exceptions import (
        AuthenticationError,
        ComfyConfigError,
        ComfyError,
        ComfyTransportError,
    )

    async def check() -> None:
        async with block.get_backend() as backend:
            await backend.check_access()

    after = "nothing was saved (--no-check saves it unchecked)"
    try:
        asyncio.run(check())
    except AuthenticationError as exc:
        raise UsageProblem(f"The server at {where} refused the key ({exc}); {after}") from None
    except ComfyTransportError as exc:
        raise UsageProblem(f"Could not reach {where} ({exc}); {after}") from None
    except ComfyConfigError as exc:
        raise UsageProblem(f"{exc}; {after}") from None
    except ComfyError as exc:
        raise UsageProblem(
            f"{where} did not answer as that kind of server ({type(exc).__name__}: {exc}); {after}"
        ) from None
    typer.echo(f"Checked: {where} takes the key.", err=True)


def _require_prefect() -> str:
    api_url = prefect_api_url()
    if not api_url:
        raise UsageProblem(
            "Blocks are saved on a Prefect server: set PREFECT_API_URL (for instance "
            "http://127.0.0.1:4200/api after 'prefect server start')"
        )
    return api_url


def _api_key(*, required: bool, env: tuple[str, ...] = ("COMFY_API_KEY",)) -> str | None:
    variable = environment_variable(*env)
    if variable is not None:
        typer.echo(f"Using the API key in {variable}.", err=True)
        return environment_value(variable)
    key = typer.prompt("Comfy API key (not shown)", hide_input=True, default="", show_default=False)
    if required and not key.strip():
        raise UsageProblem(f"No API key given: type it at the prompt, or set {env[0]}")
    return key.strip() or None


def _save(block: object, name: str, overwrite: bool) -> None:
    try:
        asyncio.run(block.asave(name, overwrite=overwrite))  # type: ignore[attr-defined]
    except ValueError as exc:
        if "already in use" in str(exc) or "already exists" in str(exc):
            raise UsageProblem(
                f"A block named {name!r} exists already; pass --overwrite to replace it"
            ) from None
        raise UsageProblem(f"Cannot save block {name!r}: {exc}") from None
    except Exception as exc:  # the server is down or refuses us: say which server
        raise PrefectUnavailable(
            f"Could not save block {name!r} on the Prefect server at {prefect_api_url()}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
