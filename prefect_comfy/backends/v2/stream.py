"""One v2 job's Server-Sent-Events stream as the package's events, its terminal status confirmed.

`job_events` reads ``GET /api/v2/jobs/{id}/events`` on the backend's one HTTP session:
``progress`` snapshots become ``job.progress`` events (with the job's tags), ``preview`` frames
``job.preview`` events (`preview_of`); a terminal ``status`` frame is confirmed
with a read of the job before it is reported (comfy-api-proxy says a transient false ``expired``
right after a fast job, so an ``expired`` is read again, backed off, for up to
`EXPIRED_CONFIRM_SECONDS`); ``output`` frames are skipped (the job's outputs are
authoritative), and so are keep-alive comments. A server without SSE (501) ends the stream at once;
a stream the server ends without a terminal frame just ends (the caller reads the job).

An open stream is not trusted for ever: when it has been quiet, or has sent only progress and
keep-alives, for `TRUST_SECONDS`, the job is read over REST, and a terminal read ends the
stream with that outcome (a server that keeps a stream alive but never sends the end, or stalls,
delays an outcome by at most that much). A line longer than `MAX_LINE_BYTES` ends the stream
with a `ComfyProtocolError` (the server does not decide how much
memory a stream takes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import quote

import httpx

from prefect_comfy.backends.v2 import mapping
from prefect_comfy.backends.v2.http import V2Http
from prefect_comfy.exceptions import ComfyAPIError, ComfyProtocolError
from prefect_comfy.models import ComfyEvent, Job
from prefect_comfy.transport.backoff import Backoff

ReadJob = Callable[[str], Awaitable[Job]]
"""How a job is read (the backend's ``get_job``)."""
ReadTags = Callable[[str], Awaitable[list[str]]]
"""How a job's tags are found (remembered, else read)."""

__all__ = [
    "EXPIRED_CONFIRM_SECONDS",
    "MAX_LINE_BYTES",
    "SSE_READ_TIMEOUT",
    "TRUST_SECONDS",
    "job_events",
]

logger = logging.getLogger(__name__)

SSE_READ_TIMEOUT = 45.0
"""Seconds an event stream may stay silent (servers send a keep-alive every ~15 s)."""
EXPIRED_CONFIRM_SECONDS = 3.0
"""How long an ``expired`` from the stream is read again before it is believed."""
TRUST_SECONDS = 20.0
"""How long a stream may stay quiet, or progress-only, before the job is read over REST."""
MAX_LINE_BYTES = 1 << 20
"""The longest line of an event stream (v2 frames are a few hundred bytes)."""
_END = object()


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
    -> the node ids its inputs come from) make the percentage count the whole graph and name the nodes (`JobProgress`).

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
    lines: asyncio.Queue[object] = asyncio.Queue(maxsize=64)
    pump = asyncio.ensure_future(_pump(http, request, response, lines))
    try:
        parser = mapping.SseParser()
        progress = mapping.JobProgress(classes, needs)
        tags: list[str] | None = None
        loop = asyncio.get_running_loop()
        checked = loop.time()  # when the job's state was last known from a status frame or a read
        while True:
            try:
                line = await asyncio.wait_for(
                    lines.get(), max(0.0, checked + TRUST_SECONDS - loop.time())
                )
            except TimeoutError:
                line = None
            if isinstance(line, BaseException):
                raise line
            if line is _END:
                return
            if loop.time() - checked >= TRUST_SECONDS:  # quiet, or progress-only, too long
                checked = loop.time()
                event = mapping.event_of(await read_job(job_id))
                if event is not None:
                    logger.info(
                        "Comfy job %s: its stream had not said it ended; a read says %s",
                        job_id,
                        event.event,
                    )
                    yield event
                    return
            if not isinstance(line, str):
                continue
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
            elif name == "preview":
                event = mapping.preview_of(job_id, data, tags)
                if event is not None:
                    yield event
            elif name == "status":
                checked = loop.time()
                if data.get("status") in mapping.TERMINAL_V2:
                    terminal = await confirmed_end(read_job, job_id, str(data["status"]))
                    if terminal is not None:
                        yield terminal
                        return
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        # Shielded: a caller that cancels the task that is closing this stream (the task that
        # just got the terminal event) must not leave the connection checked out of the pool.
        await asyncio.shield(response.aclose())


async def _pump(
    http: V2Http, request: httpx.Request, response: httpx.Response, out: asyncio.Queue[object]
) -> None:
    """The stream's lines into ``out``, then ``_END`` (or the error that ended it)."""
    try:
        with http.translating(request):
            async for line in bounded_lines(response.aiter_bytes()):
                await out.put(line)
        await out.put(_END)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await out.put(exc)


async def bounded_lines(
    chunks: AsyncIterator[bytes], limit: int | None = None
) -> AsyncIterator[str]:
    r"""Lines (ended by ``\n`` or ``\r\n``) of a byte stream, none longer than ``limit`` bytes.

    Raises:
        ComfyProtocolError: a line longer than the limit (`MAX_LINE_BYTES` by default).

    Example:
        >>> async def body():
        ...     yield b"event: a\r\ndata: 1\n\nda"
        ...     yield b"ta: 2\n"
        >>> async def read():
        ...     return [line async for line in bounded_lines(body())]
        >>> asyncio.run(read())
        ['event: a', 'data: 1', '', 'data: 2']
    """
    limit = MAX_LINE_BYTES if limit is None else limit
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        *complete, rest = bytes(buffer).split(b"\n")
        for raw in complete:
            if len(raw) > limit:
                raise _too_long(limit)
            yield raw.removesuffix(b"\r").decode("utf-8", errors="replace")
        if len(rest) > limit:
            raise _too_long(limit)
        buffer = bytearray(rest)
    if buffer:
        yield bytes(buffer).decode("utf-8", errors="replace")


def _too_long(limit: int) -> ComfyProtocolError:
    return ComfyProtocolError(
        f"A line of the Comfy API v2 event stream is longer than {limit:,} bytes; the stream "
        "was closed (the job is read over REST instead)"
    )


async def confirmed_end(read_job: ReadJob, job_id: str, said: str) -> ComfyEvent | None:
    """The terminal event as a read of the job confirms it; ``None`` if the read disagrees."""
    job = await read_job(job_id)
    pauses = Backoff(0.25, 1.0, jitter=False)
    while _expired(job) and pauses.waited < EXPIRED_CONFIRM_SECONDS:
        await pauses.pause()  # the proxy's false "expired" lasts until /history is written
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
