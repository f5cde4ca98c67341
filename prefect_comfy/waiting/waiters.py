"""Module-level waits with the signatures of Comfy's own Python SDK.

Each call waits through the shared :class:`~prefect_comfy.waiting.hub.EventHub` of a
:class:`~prefect_comfy.backends.cloud.backend.CloudBackend`, so any number of concurrent calls with the same
key in one event loop share ONE WebSocket connection. Each call builds a backend only to name the
hub (no I/O: its HTTP client would be made on a first request, which never comes); the hub works on a
clone of its own.

Example:
    >>> async def main(job_id):  # doctest: +SKIP
    ...     result = await wait_for_job(api_key="comfyui-...", job_id=job_id, timeout=600)
    ...     if result.event == "job.completed":
    ...         print([o["download_url"] for o in result.payload["outputs"]])
"""

from __future__ import annotations

from prefect_comfy.backends.base import ProgressCallback
from prefect_comfy.exceptions import ComfyConfigError
from prefect_comfy.models import ComfyEvent
from prefect_comfy.waiting.hub import EventHub

__all__ = ["wait_for_input_ready", "wait_for_job", "wait_for_model_ready"]


async def _wait(
    kind: str,
    api_key: str | None,
    resource_id: str | None,
    timeout: float | None,
    base_url: str | None,
    on_progress: ProgressCallback | None = None,
) -> ComfyEvent:
    from prefect_comfy.backends.cloud.backend import CloudBackend

    if not resource_id:
        raise ComfyConfigError(f"a {kind} id is required")
    # Only names the hub: the hub works on a clone of its own, so this backend never opens a
    # connection and has nothing to close (building one costs well under a millisecond).
    backend = CloudBackend(api_key=api_key, base_url=base_url)
    return await EventHub.shared(backend).wait(
        kind,  # type: ignore[arg-type]
        resource_id,
        timeout=timeout,
        on_progress=on_progress,
    )


async def wait_for_job(
    api_key: str | None = None,
    job_id: str | None = None,
    timeout: float | None = None,
    include_progress: bool = False,
    on_progress: ProgressCallback | None = None,
    base_url: str | None = None,
) -> ComfyEvent:
    """Wait for a job's terminal event over the shared event stream.

    Args:
        api_key: the Comfy API key; defaults to ``COMFY_API_KEY``.
        job_id: the job to wait for.
        timeout: seconds; ``None`` waits for ever.
        include_progress: deliver ``job.progress`` events to ``on_progress``.
        on_progress: called (sync or async) with each progress event, in order; only when
            ``include_progress`` is true, as in Comfy's SDK.
        base_url: the API origin; defaults to ``COMFY_BASE_URL``.

    Returns:
        The terminal event: ``job.completed``, ``job.failed`` or ``job.cancelled`` (not raised).

    Raises:
        JobTimedOut: the timeout passed first; it names the last known status.
        WebSocketAuthError: the key was refused.
        WebSocketConnectionError: the stream could not be kept within the reconnect budget.
    """
    callback = on_progress if include_progress else None
    return await _wait("job", api_key, job_id, timeout, base_url, callback)


async def wait_for_input_ready(
    api_key: str | None = None,
    input_id: str | None = None,
    timeout: float | None = None,
    base_url: str | None = None,
) -> ComfyEvent:
    """Wait for ``input.ready`` or ``input.failed`` (returned, not raised).

    Raises:
        WaitTimedOut: the timeout passed first.
    """
    return await _wait("input", api_key, input_id, timeout, base_url)


async def wait_for_model_ready(
    api_key: str | None = None,
    model_id: str | None = None,
    timeout: float | None = None,
    base_url: str | None = None,
) -> ComfyEvent:
    """Wait for ``model.ready`` or ``model.failed`` (returned, not raised).

    Raises:
        WaitTimedOut: the timeout passed first.
    """
    return await _wait("model", api_key, model_id, timeout, base_url)
