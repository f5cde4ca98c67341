"""Module-level waits with the signatures of Comfy's own Python SDK.

Each call waits through the process-wide `EventHub` of the
backend the key and origin describe (`backend_from_environment`:
the Comfy Cloud developer API), so any number of concurrent calls with the
same key, in any event loop or thread of the process, share ONE WebSocket connection. A call builds
no backend: the hub is found by a digest of the key and origin (the first call of a key builds one).

Example:
    >>> async def main(job_id):  # doctest: +SKIP
    ...     result = await wait_for_job(api_key="comfyui-...", job_id=job_id, timeout=600)
    ...     if result.event == "job.completed":
    ...         print([o["download_url"] for o in result.payload["outputs"]])
"""

from __future__ import annotations

import hashlib
from collections.abc import Coroutine
from typing import Any

from prefect_comfy.backends.base import ProgressCallback
from prefect_comfy.backends.environment import backend_from_environment
from prefect_comfy.bounded import Bounded
from prefect_comfy.exceptions import ComfyConfigError
from prefect_comfy.models import ComfyEvent
from prefect_comfy.settings import environment_value
from prefect_comfy.transport.deadlines import within
from prefect_comfy.waiting.hub import EventHub

__all__ = ["wait_for_input_ready", "wait_for_job", "wait_for_model_ready"]


_HUBS = Bounded(64)
"""The hub of each key and origin last asked for, found by a digest of what names it."""


def _hub(api_key: str | None, base_url: str | None) -> EventHub:
    """The shared hub for a key and origin, without building a backend per call.

    Building a backend parses the environment and makes a REST client; at 10,000
    waits that dominated both time and memory. The hub is found by a digest of what names it.
    """
    key_text = api_key if api_key is not None else environment_value("COMFY_API_KEY") or ""
    url_text = base_url if base_url is not None else environment_value("COMFY_BASE_URL") or ""
    digest = hashlib.blake2b(f"{key_text}\x1f{url_text}".encode(), digest_size=16).digest()
    hub = _HUBS.get(digest)
    if hub is not None and hub is EventHub._shared.get(hub.backend.connection_key):
        _HUBS.remember(digest, hub)
        return hub
    hub = EventHub.shared(backend_from_environment(api_key, base_url))
    _HUBS.remember(digest, hub)
    return hub


def _wait(
    kind: str,
    api_key: str | None,
    resource_id: str | None,
    timeout: float | None,
    base_url: str | None,
    on_progress: ProgressCallback | None = None,
) -> Coroutine[Any, Any, ComfyEvent]:
    """The hub's wait (a plain function: one coroutine frame less per pending wait)."""
    if not resource_id:
        raise ComfyConfigError(f"a {kind} id is required")
    return _hub(api_key, base_url).wait(
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
        WebSocketConnectionError: the hub was closed while the wait was pending.
    """
    # _wait's steps inlined: one coroutine frame per pending wait, not two (10,000 waits).
    if not job_id:
        raise ComfyConfigError("a job id is required")
    hub = _hub(api_key, base_url)
    waiter = hub.enter("job", job_id, on_progress if include_progress else None)
    try:
        if timeout is None:
            return await waiter.future
        return await within(waiter.future, timeout)
    except TimeoutError:
        raise hub.timed_out(waiter, timeout or 0.0) from None
    finally:
        hub.exit(waiter)


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
