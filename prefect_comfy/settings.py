"""Configuration from the environment, read when asked for, never at import time.

Every setting is ``COMFY_<NAME>``; a block field that is left unset falls back to the value here.

Example:
    >>> from prefect_comfy.settings import ComfySettings
    >>> ComfySettings(base_url="http://127.0.0.1:8765").api_url
    'http://127.0.0.1:8765/developer/api/v1'
"""

from __future__ import annotations

import os
import sys
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
        default=5, ge=0, description="Failed reconnects in a row before the stream gives up."
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


def quiet_prefect_for_no_prefect() -> None:
    """``prefect-comfy ... --no-prefect`` promises no Prefect: not even the first-run telemetry
    notice and event that importing Prefect gives a terminal (issue 17).

    Called first by ``prefect_comfy/__init__.py``, before anything imports Prefect, which reads
    ``DO_NOT_TRACK`` when it is imported. The command line imports this package before it parses
    its options, so this looks at ``sys.argv``: only for the ``prefect-comfy`` command itself (its
    console script, or ``python -m prefect_comfy.cli``, whose ``argv[0]`` is ``-m`` while this
    package loads).
    """
    command = sys.argv[0].replace("\\", "/") if sys.argv else ""
    the_command = command in ("-m", "prefect-comfy") or command.endswith(
        ("/prefect-comfy", "prefect_comfy/cli/__main__.py")
    )
    if "--no-prefect" in sys.argv[1:] and the_command:
        os.environ.setdefault("DO_NOT_TRACK", "1")
