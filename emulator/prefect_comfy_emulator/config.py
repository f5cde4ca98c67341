"""The emulator's configuration: one object, handed to `create_app` or `EmulatorServer`.

Example:
    >>> from prefect_comfy_emulator import EmulatorConfig
    >>> config = EmulatorConfig(api_keys=["comfyui-test-key-not-real"], seed=1234)
    >>> "comfyui-test" in repr(config)
    False
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

API_PREFIX = "/developer/api/v1"
"""Where the REST routes and the WebSocket hang (the same prefix as the real service)."""
V2_PREFIX = "/api/v2"
"""Where the Comfy API v2 face hangs (same port, same keys, same state)."""
CONTROL_PREFIX = "/_emulator"
"""The reserved prefix of the test controls (no authentication)."""
STORAGE_PREFIX = "/_storage"
"""The emulator's stand-in for signed object storage (outside the API prefix, no authentication)."""


class EmulatorConfig(BaseModel):
    """How one emulator behaves. Durations are in seconds.

    Attributes:
        api_keys: the keys the emulator accepts (never shown in ``repr``).
        seed: seeds ids, signatures and image pixels; ``None`` picks one at random.
        step_duration: time of one execution step (one KSampler step, or one plain node).
        upload_duration: time an upload or download takes before it turns ``ready``/``failed``.
        host: the address to bind (loopback by default).
        port: the port to bind; 0 picks a free one.
        concurrency: jobs run at the same time; the others wait ``pending``, first in first out.
        max_image_side: largest width or height of an output image (bigger requests are cut down).
        max_batch_images: most images one SaveImage/PreviewImage writes per job.
        ws_queue_size: frames a WebSocket connection may have waiting before it is closed with 1013.
        ws_send_buffer_bytes: bytes of frames a WebSocket connection may have waiting (queued, or
            handed to a socket that the client does not read) before it is closed with 1013.
        ws_close_timeout: seconds a connection closed for reading too slowly gets to take its close
            frame before its TCP stream is cut.
        max_request_bytes: largest request body; a bigger one is answered 413 without being read.
        v2_max_streams: SSE streams the v2 face keeps open at once (the proxy's cap is 8).
        v2_stream_retry_after: the ``Retry-After`` (seconds) of a 429 ``too_many_streams``.
        v2_keepalive_seconds: the keep-alive comment interval of a quiet SSE stream.
        v2_sse: ``False`` answers the event streams 501 ``not_implemented`` (a surface without SSE).
        v2_list_jobs: ``False`` answers ``GET /api/v2/jobs`` 501, as Comfy Cloud does.
        download_timeout: seconds the emulator waits on a ``from-url`` download.
        account_email: the e-mail shown by ``GET /account``.
    """

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    api_keys: list[str] = Field(min_length=1, repr=False)
    seed: int | None = None
    step_duration: float = Field(default=0.05, ge=0)
    upload_duration: float = Field(default=0.1, ge=0)
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    concurrency: int = Field(default=4, ge=1, le=1000)
    max_image_side: int = Field(default=1024, ge=1, le=4096)
    max_batch_images: int = Field(default=16, ge=1, le=256)
    ws_queue_size: int = Field(default=10_000, ge=1)
    ws_send_buffer_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    ws_close_timeout: float = Field(default=2.0, gt=0)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    v2_max_streams: int = Field(default=8, ge=0)
    v2_stream_retry_after: int = Field(default=5, ge=0)
    v2_keepalive_seconds: float = Field(default=15.0, gt=0)
    v2_sse: bool = True
    v2_list_jobs: bool = True
    download_timeout: float = Field(default=10.0, gt=0)
    account_email: str = "developer@example.com"

    @field_validator("api_keys")
    @classmethod
    def _keys_not_blank(cls, keys: list[str]) -> list[str]:
        if any(not k or k.strip() != k for k in keys):
            raise ValueError("API keys must be non-empty and carry no surrounding spaces")
        return keys
