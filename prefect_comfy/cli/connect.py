"""Where a command's credentials come from: ``--block NAME``, else the ``COMFY_*`` environment.

``--block`` takes any saved ``ComfyCloudCredentials`` or ``ComfyUIServer`` block (``slug/name``
picks the type when both have the name). Blocks live on a Prefect server, so ``--block`` needs
``PREFECT_API_URL`` (or a Prefect profile that sets it): without one, Prefect would start a
throw-away server that holds no blocks, so the command says so instead.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from prefect_comfy.cli.errors import PrefectUnavailable, UsageProblem

if TYPE_CHECKING:
    from prefect_comfy import ComfyBackend

BLOCK_HELP = (
    "Name of a saved ComfyCloudCredentials, ComfyUIServer or ComfyV2Credentials block. Default: COMFY_API_KEY and "
    "COMFY_BASE_URL from the environment."
)

BlockOption = Annotated[
    str | None,
    typer.Option("--block", "-b", help=BLOCK_HELP, metavar="NAME", show_default=False),
]
"""The ``--block`` option every command that talks to Comfy takes."""


def prefect_api_url() -> str | None:
    """The Prefect API URL from the environment or the active Prefect profile, if any."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


async def load_block(name: str) -> Any:
    """A saved credentials block of any of the three kinds.

    Raises:
        UsageProblem: no Prefect API is configured, or no block of any kind has that name.
    """
    api_url = prefect_api_url()
    if not api_url:
        raise UsageProblem(
            f"--block {name} needs a Prefect server that holds the block: set PREFECT_API_URL "
            "(for instance http://127.0.0.1:4200/api), or use COMFY_API_KEY and COMFY_BASE_URL"
        )
    from prefect.blocks.core import Block

    from prefect_comfy import ComfyCloudCredentials, ComfyUIServer, ComfyV2Credentials

    kinds = [Block] if "/" in name else [ComfyCloudCredentials, ComfyUIServer, ComfyV2Credentials]
    for kind in kinds:
        try:
            return await kind.aload(name)
        except ValueError:
            continue
        except Exception as exc:  # the server is down or refuses us: say which server
            raise PrefectUnavailable(
                f"Could not load block {name!r} from the Prefect server at {api_url}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    raise UsageProblem(
        f"No ComfyCloudCredentials, ComfyUIServer or ComfyV2Credentials block named {name!r} on "
        f"{api_url}; save one with 'prefect-comfy blocks create cloud|comfyui' (a "
        "ComfyV2Credentials block with .save(NAME) in Python)"
    )


async def credentials_for(block: str | None) -> Any:
    """The block named ``block``, or a ``ComfyCloudCredentials`` that reads the environment."""
    if block:
        return await load_block(block)
    from prefect_comfy import ComfyCloudCredentials

    _require_env_key()
    return ComfyCloudCredentials()


async def backend_for(block: str | None) -> ComfyBackend:
    """A backend from the block named ``block``, or from the environment (no Prefect import)."""
    if block:
        return (await load_block(block)).get_backend()
    from prefect_comfy import CloudBackend

    _require_env_key()
    return CloudBackend()


def _require_env_key() -> None:
    if not os.environ.get("COMFY_API_KEY"):
        raise UsageProblem(
            "No Comfy credentials: pass --block NAME (a saved block), or set COMFY_API_KEY "
            "(and COMFY_BASE_URL for a server other than https://cloud.comfy.org)"
        )
