"""Waits on any backend: the functions the Prefect layer and the listener call.

Each goes through the process-wide `EventHub` of the backend's
credentials, so every wait of the process on one server shares one stream, whatever its event
loop or thread. They replace the ``wait_for_*`` methods that `ComfyBackend` had (the backend
interface no longer imports the waiting layer).

Example:
    >>> async def main(backend, job_id):  # doctest: +SKIP
    ...     event = await wait_for(backend, "job", job_id, timeout=600)
    ...     print(event.event)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from prefect_comfy.backends.base import ComfyBackend, ProgressCallback
from prefect_comfy.exceptions import ComfyError
from prefect_comfy.models import ComfyEvent, Job
from prefect_comfy.waiting.hub import EventHub, Kind, Mark

__all__ = ["stream_ready", "submit_connected", "wait_for", "wait_for_input", "wait_for_model"]

logger = logging.getLogger(__name__)

READY_TIMEOUT = 10.0
"""Seconds `stream_ready` waits for the event stream before a submit goes ahead without it."""


async def stream_ready(backend: ComfyBackend, timeout: float = READY_TIMEOUT) -> Mark | None:
    """Open the process's event stream for ``backend`` and return its mark once it is up.

    Call it before submitting a job you will follow: a server tells a job's first news only to a
    client that is connected when the job starts (ComfyUI's ``execution_cached``, the nodes a warm
    server skips, comes at once and only to the submitting client id). ``None`` when the stream is
    not up within ``timeout`` seconds: the submit goes ahead, and the wait reads once as usual.
    """
    try:
        return await EventHub.shared(backend).ready(timeout=timeout)
    except (ComfyError, OSError) as exc:
        logger.info("submitting before the event stream is up: %s", exc)
        return None


async def submit_connected(
    backend: ComfyBackend,
    graph: dict[str, Any],
    *,
    tags: Sequence[str] = (),
    idempotency_key: str | None = None,
) -> tuple[Job, Mark | None]:
    """Submit ``graph`` once the event stream is up (`stream_ready`).

    Returns:
        The job, and the mark to pass to `wait_for` as ``covered_since``.
    """
    covered = await stream_ready(backend)
    job = await backend.submit(graph, tags=list(tags), idempotency_key=idempotency_key)
    return job, covered


async def wait_for(
    backend: ComfyBackend,
    kind: Kind,
    resource_id: str,
    *,
    timeout: float | None = None,
    on_progress: ProgressCallback | None = None,
    covered_since: Mark | None = None,
) -> ComfyEvent:
    """Wait for a job's, input's or model's terminal event (returned, not raised).

    Args:
        backend: the server and credentials (the hub keeps a clone: closing yours is fine).
        kind: ``job``, ``input`` or ``model``.
        resource_id: the resource's id.
        timeout: seconds; ``None`` waits for ever.
        on_progress: called with each ``job.progress`` event (sync or async), in order; also with
            the job's ``job.preview`` events (live preview images) if it was made with
            `with_previews`.
        covered_since: ``await EventHub.shared(backend).ready()`` taken before submitting: the
            wait then needs no REST read while the stream stays up.

    Raises:
        JobTimedOut: a job wait timed out; it names the last known status.
        WaitTimedOut: an input or model wait timed out.
        WebSocketAuthError, WebSocketConnectionError: the stream failed for good.
        NotFound: the server has no such resource.
    """
    return await EventHub.shared(backend).wait(
        kind, resource_id, timeout=timeout, on_progress=on_progress, covered_since=covered_since
    )


async def wait_for_input(
    backend: ComfyBackend, input_id: str, *, timeout: float | None = None
) -> ComfyEvent:
    """Wait for ``input.ready`` or ``input.failed``; raises `WaitTimedOut` on timeout."""
    return await wait_for(backend, "input", input_id, timeout=timeout)


async def wait_for_model(
    backend: ComfyBackend, model_id: str, *, timeout: float | None = None
) -> ComfyEvent:
    """Wait for ``model.ready`` or ``model.failed``; raises `WaitTimedOut` on timeout."""
    return await wait_for(backend, "model", model_id, timeout=timeout)
