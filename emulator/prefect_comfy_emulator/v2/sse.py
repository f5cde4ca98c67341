"""``GET /api/v2/jobs/{id}/events``: one Server-Sent-Events stream per job, under a cap.

The stream opens with a snapshot (a ``status`` event, then the latest ``progress`` if the job has
one), then follows the job: ``status`` on every change, a ``progress`` snapshot per step, an ``output``
per output when the job succeeds, and the terminal ``status`` last, after which the stream ends.
Between frames a keep-alive comment goes out every ``v2_keepalive_seconds``. Events carry no ids and
there is no replay. Past ``v2_max_streams`` open streams the answer is 429 ``too_many_streams`` with
``Retry-After``. The shared fault controls apply: paused events are held, duplicated events are sent
twice, and ``drop-connections`` ends every stream at once (without a terminal frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from prefect_comfy_emulator.v2.errors import V2Error
from prefect_comfy_emulator.v2.face import V2Face
from prefect_comfy_emulator.v2.jobs import (
    face_of,
    get_owned_job,
    origin_of,
    owner_of,
    queue_position,
)
from prefect_comfy_emulator.v2.render import TERMINAL_V2, output_of, progress_of, status_of

QUEUE_SIZE = 1000
"""Events a stream may have waiting; a stream that falls that far behind is ended (the client
reconnects and gets a fresh snapshot)."""
_DROP = ("drop", {})


def frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class JobStream:
    """A bus listener for one job's events."""

    def __init__(self, owner: str, job_id: str) -> None:
        self.owner, self.job_id = owner, job_id
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(QUEUE_SIZE)
        self.overflowed = False

    def deliver(self, owner: str, name: str, payload: dict[str, Any]) -> None:
        if owner != self.owner or payload.get("id") != self.job_id or self.overflowed:
            return
        try:
            self.queue.put_nowait((name, payload))
        except asyncio.QueueFull:
            self.overflowed = True

    def drop(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(_DROP)
        self.overflowed = True


async def _frames(face: V2Face, stream: JobStream, origin: str) -> AsyncIterator[bytes]:
    state = face.state
    job = state.jobs.get(stream.job_id)
    if job is None:  # forgotten by a reset between the answer and its first frame
        return
    try:
        sent = status_of(job)
        yield frame("status", {"status": sent, "queue_position": queue_position(face, job)})
        if sent in TERMINAL_V2:
            return
        last = progress_of(job)
        if last is not None:
            yield frame("progress", last)
        while True:
            try:
                name, _ = await asyncio.wait_for(
                    stream.queue.get(), face.config.v2_keepalive_seconds
                )
            except TimeoutError:
                if stream.overflowed:
                    return
                yield b": keep-alive\n\n"
                continue
            if (name, _) == _DROP or state.jobs.get(job.id) is not job:
                return
            now = status_of(job)
            if now != sent and now not in TERMINAL_V2:
                sent = now
                yield frame("status", {"status": now, "queue_position": queue_position(face, job)})
            if name == "job.progress" and now not in TERMINAL_V2:
                snapshot = progress_of(job)
                if snapshot is not None and snapshot != last:
                    last = snapshot
                    yield frame("progress", snapshot)
            if now in TERMINAL_V2:
                snapshot = progress_of(job)
                if now == "succeeded" and snapshot is not None and snapshot != last:
                    yield frame("progress", snapshot)  # the 100 % that the last step made
                for output in job.outputs:
                    yield frame("output", output_of(output, origin))
                yield frame("status", {"status": now, "queue_position": None})
                return
    finally:
        state.bus.listeners.discard(stream)


async def job_events(request: Request) -> Response:
    face, owner = face_of(request), owner_of(request)
    if not face.config.v2_sse:
        raise V2Error(501, "not_implemented", "this server has no event streams: poll the job")
    job = get_owned_job(face, owner, request.path_params["id"])
    if face.streams_open >= face.config.v2_max_streams:
        face.streams_refused += 1
        retry = face.config.v2_stream_retry_after
        raise V2Error(
            429,
            "too_many_streams",
            f"{face.streams_open} event streams are open, the most this server allows: "
            f"retry after {retry} s, or poll GET /api/v2/jobs/{{id}}",
            headers={"Retry-After": str(retry)},
        )
    stream = JobStream(owner, job.id)
    face.state.bus.listeners.add(stream)  # before the snapshot, so that nothing falls between
    face.streams_open += 1
    face.streams_peak = max(face.streams_peak, face.streams_open)
    return _Slot(face, stream, _frames(face, stream, origin_of(request)))


class _Slot(StreamingResponse):
    """A stream response that gives its slot back however it ends (even before its first frame,
    when the client goes away at once)."""

    def __init__(self, face: V2Face, stream: JobStream, frames: AsyncIterator[bytes]) -> None:
        super().__init__(
            frames,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._face, self._stream = face, stream

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._face.state.bus.listeners.discard(self._stream)
            self._face.streams_open -= 1
