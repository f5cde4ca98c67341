"""Configuration from the environment, read when asked for, never at import time.

Every setting is ``COMFY_<NAME>``, and every ``COMFY_*`` variable the package reads is documented
here, once: the fields of `ComfySettings`, and `SEPARATE_VARIABLES` (read on their own, where a bad
value must not stop every other setting). `variables` lists them all (docs/blocks.md's table of
environment variables is checked against it). No other module reads the environment for a
``COMFY_*`` name: they call `ComfySettings`, or `environment_value` for a variable read on its own
(tests/unit/test_architecture.py checks it). A block field that is left unset falls back to the
value here.

Example:
    >>> from prefect_comfy.settings import ComfySettings
    >>> ComfySettings(base_url="http://127.0.0.1:8765").api_url
    'http://127.0.0.1:8765/developer/api/v1'
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BASE_URL = "https://cloud.comfy.org"
DOCS_URL = "http://127.0.0.1:8000/"
"""Where this project's documentation site is: ``site_url`` in mkdocs.yml (a test holds them equal).

The project has no public site yet: this is where ``mkdocs serve`` serves the site built from
``docs/``, so the blocks' "View Docs" link opens it while that runs. Change both when it is published.
"""
API_PREFIX = "/developer/api/v1"


class ComfySettings(BaseSettings):
    """Settings for talking to Comfy, from ``COMFY_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="COMFY_", extra="ignore")

    api_key: SecretStr | None = Field(default=None, description="The Comfy API key (comfyui-…).")
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="Origin of the developer API, such as https://cloud.comfy.org; the client adds "
        "/developer/api/v1.",
    )
    url: str | None = Field(
        default=None,
        description="A server for the command line, of any kind (the developer API, a ComfyUI, a "
        "Comfy API v2 server): what `prefect-comfy --url` takes when it is not given.",
    )
    ws_auth: Literal["header", "query"] = Field(
        default="header",
        description="How the WebSocket handshake carries the key: an Authorization header, or the "
        "api_key query parameter.",
    )
    request_timeout: float = Field(default=30.0, gt=0, description="Seconds for one HTTP request.")
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to open a connection.")
    max_retries: int = Field(
        default=4, ge=0, description="Retries of one REST call after 429, 5xx or a transport error."
    )
    retry_max_delay: float = Field(
        default=30.0, gt=0, description="Longest pause between two REST retries, in seconds."
    )
    ping_interval: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between WebSocket pings; a missing pong is a dead link.",
    )
    ping_timeout: float = Field(default=10.0, gt=0, description="Seconds to wait for a pong.")
    max_streams: int = Field(
        default=8,
        ge=1,
        description="Most per-job event streams open at once on a server without a global stream "
        "(Comfy API v2); lowered when the server answers 429 too_many_streams.",
    )
    max_reconnect_attempts: int = Field(
        default=5,
        ge=0,
        description=(
            "Failed reconnects in a row before a stream from ComfyBackend.events() gives up (the"
            " waiting layer and the listener reconnect for ever, reading over REST meanwhile)."
        ),
    )
    reconnect_delay: float = Field(default=1.0, gt=0, description="First reconnect pause, seconds.")
    max_reconnect_delay: float = Field(
        default=30.0, gt=0, description="Longest reconnect pause, seconds."
    )

    allow_insecure_http: bool = Field(
        default=False,
        description="Send the API key over plain http:// to a host that is not this machine "
        "(COMFY_ALLOW_INSECURE_HTTP=1); off by default, because anyone on the path can read it.",
    )
    max_response_bytes: int = Field(
        default=64 * 2**20,
        gt=0,
        description="Most bytes of one API answer read into memory; more is an error.",
    )
    max_download_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Most bytes of one downloaded output; unset means no limit.",
    )
    download_stall_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a download may go without receiving a byte before it fails.",
    )

    catalog_source: str | None = Field(
        default=None,
        description="Where a server without a catalog route (the developer API, Comfy API v2) "
        "gets its node catalog: a ComfyUI URL (http://127.0.0.1:8188) or a saved object_info JSON "
        "file; used to convert save-format workflows and check inputs by name.",
    )

    v2_base_url: str | None = Field(
        default=None,
        description="The Comfy API v2 server (a comfy-api-proxy, Comfy Cloud) of a "
        "ComfyV2Credentials block without an endpoint, and of `prefect-comfy blocks v2` without "
        "--url; unset: https://cloud.comfy.org.",
    )
    v2_api_key: SecretStr | None = Field(
        default=None,
        description="The Comfy API v2 secret key, where a block or --url names a v2 server "
        "without one; unset: COMFY_API_KEY.",
    )
    listener_cursor: str | None = Field(
        default=None,
        description="Where `prefect-comfy listen` keeps what is in flight across restarts, "
        "without --cursor: a file path, variable:NAME (a Prefect variable) or none; unset: a "
        "state file under PREFECT_HOME.",
    )

    @field_validator("base_url")
    @classmethod
    def _strip_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value.endswith(API_PREFIX):
            value = value[: -len(API_PREFIX)]
        return value

    @property
    def api_url(self) -> str:
        """The REST base: the origin plus ``/developer/api/v1``."""
        return self.base_url + API_PREFIX


SEPARATE_VARIABLES: dict[str, str] = {
    "COMFY_LISTENER_EVENTS_PER_SECOND": "Most events a second `prefect-comfy listen` sends to "
    "Prefect, all kinds together (default 300; 0: no limit), without --events-per-second. A "
    "value that is not a number >= 0 stops the listener with an error that says so.",
    "COMFY_PROGRESS_EVENTS_PER_SECOND": "Most comfy.job.progress events a process sends to "
    "Prefect in any one-second window, all jobs together, the listener's included (default 50; "
    "0: none). A value that is not a number >= 0 is logged and the default used.",
}
"""``COMFY_*`` variables that are not fields of `ComfySettings`: each is read on its own
(`environment_value`), and a bad value is handled where it is used, never by failing every
`ComfySettings`."""


def variables() -> dict[str, str]:
    """Every ``COMFY_*`` variable the package reads, with what it does.

    Example:
        >>> variables()["COMFY_API_KEY"]
        'The Comfy API key (comfyui-…).'
    """
    prefix = ComfySettings.model_config.get("env_prefix", "")
    fields = {
        f"{prefix}{name.upper()}": field.description or ""
        for name, field in ComfySettings.model_fields.items()
    }
    return {**fields, **SEPARATE_VARIABLES}


def environment_variable(*names: str) -> str | None:
    """The first of these environment variables that is set and not empty, else ``None``.

    For the variables read on their own: those of `SEPARATE_VARIABLES`, a field's variable read
    without validating the others (an error message that must redact the key whatever else is
    wrong), the API key variables of a kind of server (`ComfyBackend.key_variables`) and the one
    ``prefect-comfy --api-key-env`` names.
    """
    return next((name for name in names if os.environ.get(name)), None)


def environment_value(*names: str) -> str | None:
    """The value of the first of these environment variables that is set and not empty, else
    ``None`` (see `environment_variable`).

    Example:
        >>> environment_value("COMFY_UNSET_EXAMPLE", "COMFY_ALSO_UNSET") is None
        True
    """
    name = environment_variable(*names)
    return None if name is None else os.environ[name]
