"""One v2 job's Server-Sent-Events stream as the package's events, its terminal status confirmed.

:func:`job_events` reads ``GET /api/v2/jobs/{id}/events`` on the backend's one HTTP session:
``progress`` snapshots become ``job.progress`` events (with the job's tags); a terminal ``status`` frame is confirmed
with a read of the job before it is reported (comfy-api-proxy says a transient false ``expired``
right after a fast job, so an ``expired`` is read again, backed off, for up to
:data:`EXPIRED_CONFIRM_SECONDS`); ``output`` frames are skipped (the job's outputs are
authoritative), and so are keep-alive comments. A server without SSE (501) ends the stream at once;
a stream the server ends without a terminal frame just ends (the caller reads the job).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import quote

import httpx

from prefect_comfy.backends.v2 import mapping
from prefect_comfy.backends.v2.http import V2Http
from prefect_comfy.exceptions import ComfyAPIError
from prefect_comfy.models import ComfyEvent, Job

ReadJob = Callable[[str], Awaitable[Job]]
"""How a job is read (the backend's ``get_job``)."""
ReadTags = Callable[[str], Awaitable[list[str]]]
"""How a job's tags are found (remembered, else read)."""

__all__ = ["EXPIRED_CONFIRM_SECONDS", "SSE_READ_TIMEOUT", "job_events"]

logger = logging.getLogger(__name__)

SSE_READ_TIMEOUT = 45.0
"""Seconds an event stream may stay silent (servers send a keep-alive every ~15 s)."""
EXPIRED_CONFIRM_SECONDS = 3.0
"""How long an ``expired`` from the stream is read again before it is believed."""


async def job_events(
    http: V2Http,
    read_job: ReadJob,
    job_id: str,
    *,
    tags_of: ReadTags | None = None,
    classes: dict[str, str] | None = None,
    needs: dict[str, set[str]] | None = None,
) -> AsyncIterator[ComfyEvent]:
    """One job's events; see the module docstring. ``tags_of`` gives the job's tags for its
    progress events (a v2 ``progress`` frame has none); it is asked once, at the first one.
    ``classes`` (node id -> class_type of the submitted graph, when known) and ``needs`` (node id
    -> the node ids its inputs come from) make the percentage count the whole graph and name the nodes (:class:`~prefect_comfy.backends.v2.mapping.JobProgress`).

    Raises:
        TooManyStreams: 429 ``too_many_streams``; ``retry_after`` says when to try again.
    """
    s = http.settings
    request = http.client.build_request(
        "GET",
        http.url(f"/jobs/{quote(job_id, safe='')}/events"),
        headers={"Accept": "text/event-stream"},
        timeout=httpx.Timeout(s.request_timeout, connect=s.connect_timeout, read=SSE_READ_TIMEOUT),
    )
    try:
        response = await http.send(request, stream=True)
    except ComfyAPIError as exc:
        if exc.status_code == 501:
            logger.debug("Comfy API v2 at %s has no event streams (501)", http.origin)
            return
        raise
    try:
        parser = mapping.SseParser()
        progress = mapping.JobProgress(classes, needs)
        tags: list[str] | None = None
        with http.translating(request):
            async for line in response.aiter_lines():
                item = parser.feed(line)
                if item is None or not isinstance(item[1], dict):
                    continue
                name, data = item
                if name == "progress":
                    payload = progress.payload(job_id, data)
                    if tags is None and tags_of is not None:
                        tags = await _tags(tags_of, job_id)
                    if tags is not None:
                        payload["tags"] = tags
                    yield ComfyEvent(event="job.progress", payload=payload)
                elif name == "status" and data.get("status") in mapping.TERMINAL_V2:
                    terminal = await confirmed_end(read_job, job_id, str(data["status"]))
                    if terminal is not None:
                        yield terminal
                        return
    finally:
        # Shielded: a caller that cancels the task that is closing this stream (the task that
        # just got the terminal event) must not leave the connection checked out of the pool.
        await asyncio.shield(response.aclose())


async def confirmed_end(read_job: ReadJob, job_id: str, said: str) -> ComfyEvent | None:
    """The terminal event as a read of the job confirms it; ``None`` if the read disagrees."""
    job = await read_job(job_id)
    delay, waited = 0.25, 0.0
    while _expired(job) and waited < EXPIRED_CONFIRM_SECONDS:
        await asyncio.sleep(delay)  # the proxy's false "expired" lasts until /history is written
        waited += delay
        delay = min(delay * 2, 1.0)
        job = await read_job(job_id)
    if not job.is_terminal:
        logger.info("Comfy job %s: the stream said %s, a read says %s", job_id, said, job.status)
    return mapping.event_of(job)


async def _tags(tags_of: ReadTags, job_id: str) -> list[str] | None:
    try:
        return list(await tags_of(job_id))
    except ComfyAPIError as exc:  # the progress goes out without tags rather than not at all
        logger.debug("could not read the tags of Comfy job %s: %s", job_id, exc)
        return None


def _expired(job: Job) -> bool:
    return job.status == "failed" and job.error is not None and job.error.code == "expired"
