"""Which server a command talks to: ``--url URL`` (or ``COMFY_URL``), ``--block NAME``, or the
``COMFY_*`` environment (the developer API).

``--url`` takes any kind of Comfy server. Its kind is found by asking it: each backend names a
path that only its kind answers (`url_probe`:
the developer API's ``/developer/api/v1/jobs``, Comfy API v2's ``/api/v2/health``, ComfyUI's
``/system_stats``), asked in that order with no key; ``--kind comfyui|v2|cloud`` skips the asking.
The key comes from ``--api-key-env NAME`` (the variable that holds it), else from the kind's usual
variables (``COMFY_API_KEY``; for v2 ``COMFY_V2_API_KEY`` first), never from the command line,
where it would stay in the shell's history and in ``ps``.

``--url``, ``--kind`` and ``--api-key-env`` are accepted anywhere on the line, by every command that
talks to a server (`lift_server_options` moves them where the top-level options are parsed,
and `use_server` keeps them for `backend_for` and `credentials_for`).

``--block`` takes a saved block of any registered kind of server (``ComfyCloudCredentials``,
``ComfyUIServer``, ``ComfyV2Credentials``, or one a package registers; ``slug/name`` picks the type
when two have the name). Blocks live on a Prefect server, so ``--block`` needs
``PREFECT_API_URL`` (or a Prefect profile that sets it): without one, Prefect would start a
throw-away server that holds no blocks, so the command says so instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from prefect_comfy.backends.environment import URL_KINDS, backend_class
from prefect_comfy.cli.errors import PrefectUnavailable, UsageProblem
from prefect_comfy.settings import environment_value

if TYPE_CHECKING:
    from prefect_comfy import ComfyBackend

BLOCK_HELP = (
    "Name of a saved ComfyCloudCredentials, ComfyUIServer or ComfyV2Credentials block. Default: "
    "--url (or COMFY_URL), else COMFY_API_KEY and COMFY_BASE_URL from the environment."
)

BlockOption = Annotated[
    str | None,
    typer.Option("--block", "-b", help=BLOCK_HELP, metavar="NAME", show_default=False),
]
"""The ``--block`` option every command that talks to Comfy takes."""

KINDS = URL_KINDS
"""The kinds ``--kind`` names (kept in ``backends/environment.py``, which may name them)."""

SERVER_OPTIONS = ("--url", "--kind", "--api-key-env")
"""The options `lift_server_options` accepts anywhere on the command line."""

PROBE_TIMEOUT = 5.0
"""Seconds to wait for each answer while finding the kind of a ``--url`` server."""


@dataclass
class ServerChoice:
    """What ``--url``, ``--kind`` and ``--api-key-env`` said (``url`` falls back to ``COMFY_URL``)."""

    url: str | None = None
    kind: str | None = None
    api_key_env: str | None = None


_choice = ServerChoice()


def use_server(url: str | None, kind: str | None, api_key_env: str | None) -> None:
    """Keep the top-level ``--url``, ``--kind`` and ``--api-key-env`` for this command.

    Raises:
        UsageProblem: an unknown kind, or a variable that is not set.
    """
    if kind is not None and kind not in KINDS:
        raise UsageProblem(f"--kind {kind}: use one of {', '.join(KINDS)}")
    if api_key_env is not None and not environment_value(api_key_env):
        raise UsageProblem(f"--api-key-env {api_key_env}: that environment variable is not set")
    _choice.url, _choice.kind, _choice.api_key_env = url, kind, api_key_env


def lift_server_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` split into its ``--url X``, ``--kind X``, ``--api-key-env X`` (or ``--url=X``),
    wherever the user wrote them, and the rest: the first go where the top-level options are
    parsed. ``blocks`` keeps its own: ``blocks create comfyui|v2 --url X`` names the block's server."""
    lifted: list[str] = []
    rest: list[str] = []
    if _command(argv) == "blocks":
        return lifted, list(argv)
    words = iter(argv)
    for word in words:
        if word == "--":
            rest.append(word)
            rest.extend(words)
            break
        if word.split("=", 1)[0] in SERVER_OPTIONS:
            lifted.append(word)
            if "=" not in word:
                lifted.append(next(words, ""))
        else:
            rest.append(word)
    return lifted, rest


def _command(argv: list[str]) -> str | None:
    """The command word of ``argv``: its first word that is neither an option nor a server option's value."""
    words = iter(argv)
    for word in words:
        if word in SERVER_OPTIONS:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def server_url() -> str | None:
    """``--url``, else ``COMFY_URL``."""
    if _choice.url:
        return _choice.url
    from prefect_comfy.settings import ComfySettings

    return ComfySettings().url


def prefect_api_url() -> str | None:
    """The Prefect API URL from the environment or the active Prefect profile, if any."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


async def load_block(name: str) -> Any:
    """A saved credentials block of any registered kind of server.

    Raises:
        UsageProblem: no Prefect API is configured, or no block of any kind has that name.
    """
    api_url = prefect_api_url()
    if not api_url:
        raise UsageProblem(
            f"--block {name} needs a Prefect server that holds the block: set PREFECT_API_URL "
            "(for instance http://127.0.0.1:4200/api), or use --url URL, or COMFY_API_KEY and "
            "COMFY_BASE_URL"
        )
    from prefect_comfy.backends.registry import load_credentials

    try:
        return await load_credentials(name)  # any registered kind of server
    except ValueError as exc:
        raise UsageProblem(
            f"{exc} on {api_url}; save one with 'prefect-comfy blocks create KIND {name}' or "
            f"with .save({name!r}) in Python"
        ) from exc
    except Exception as exc:  # the server is down or refuses us: say which server
        raise PrefectUnavailable(
            f"Could not load block {name!r} from the Prefect server at {api_url}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _backend_class(kind: str) -> type[ComfyBackend]:
    return backend_class(kind)


async def find_kind(url: str) -> str:
    """The kind of the server at ``url``, found by asking it (see the module's docstring).

    Raises:
        UsageProblem: nothing answers there, or nothing that says which kind it is.
    """
    import httpx

    from prefect_comfy.transport.origins import normalize_origin

    try:
        origin = normalize_origin(url.strip().rstrip("/"))
    except Exception as exc:
        raise UsageProblem(f"--url {url}: {exc}") from exc
    asked = []
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, follow_redirects=False) as http:
        for kind in KINDS:
            probe = _backend_class(kind).url_probe
            if probe is None:
                continue
            path, statuses = probe
            asked.append(path)
            try:
                response = await http.get(origin + path)
            except httpx.HTTPError as exc:
                raise UsageProblem(
                    f"Nothing answers at {origin} ({type(exc).__name__}): check --url (or COMFY_URL)"
                ) from exc
            if response.status_code in statuses:
                return kind
    raise UsageProblem(
        f"Could not tell which kind of Comfy server is at {origin} (asked {', '.join(asked)}): "
        f"pass --kind {'|'.join(KINDS)}"
    )


def _key_for(kind: str) -> str | None:
    if _choice.api_key_env:
        return environment_value(_choice.api_key_env)
    return environment_value(*_backend_class(kind).key_variables)


async def _kind_of(url: str) -> str:
    return _choice.kind or await find_kind(url)


async def credentials_for(block: str | None) -> Any:
    """The block named ``block``; else a block for ``--url``; else ``ComfyCloudCredentials``
    that reads the environment."""
    url = _only_one(block)
    if block:
        return await load_block(block)
    if url:
        import prefect_comfy

        kind = await _kind_of(url)
        _, block_class, field = KINDS[kind]
        return getattr(prefect_comfy, block_class)(**{field: url, "api_key": _key_for(kind)})
    from prefect_comfy import ComfyCloudCredentials

    _require_env_key()
    return ComfyCloudCredentials()


async def backend_for(block: str | None) -> ComfyBackend:
    """A backend from the block named ``block``, from ``--url``, or from the environment (the last
    two with no Prefect import)."""
    url = _only_one(block)
    if block:
        return (await load_block(block)).get_backend()
    if url:
        kind = await _kind_of(url)
        return _backend_class(kind).at_url(url, _key_for(kind))
    from prefect_comfy import CloudBackend

    _require_env_key()
    return CloudBackend()


def _only_one(block: str | None) -> str | None:
    url = _choice.url  # an explicit --url clashes with --block; COMFY_URL gives way to it
    if block and url:
        raise UsageProblem("--block and --url both name a server: pass one of them")
    return None if block else server_url()


def _require_env_key() -> None:
    if not environment_value("COMFY_API_KEY"):
        raise UsageProblem(
            "No Comfy credentials: pass --url URL (any kind of server), --block NAME (a saved "
            "block), or set COMFY_API_KEY (and COMFY_BASE_URL for a server other than "
            "https://cloud.comfy.org)"
        )
