"""In-memory seams for the listener's unit tests: a fake backend, a fake Prefect events client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.exceptions import (
    NotFound,
    WebSocketAuthError,
    WebSocketConnectionError,
)
from prefect_comfy.listener.forwarder import ComfyListener
from prefect_comfy.models import ComfyEvent, Input, Job, Model
from prefect_comfy.orchestration.events.budget import ProgressBudget
from tests.support.waiting import eventually

ADDRESS = "http://comfy.test"


class FakeEventsClient:
    """Records what is emitted; can fail the first few emits."""

    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[Any] = []
        self.fail_first = fail_first
        self.entered = 0
        self.exited = 0

    async def __aenter__(self) -> FakeEventsClient:
        self.entered += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exited += 1

    async def emit(self, event: Any) -> None:
        if self.fail_first > 0:
            self.fail_first -= 1
            raise ConnectionError("prefect is down")
        self.events.append(event)

    def named(self, name: str) -> list[Any]:
        return [e for e in self.events if e.event == name]


class FakeBackend(ComfyBackend):
    """Streams events from a queue; ``disconnect()`` ends one stream (as a stream that failed)."""

    kind = "cloud"

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.inputs: dict[str, Input] = {}
        self.models: dict[str, Model] = {}
        self.reads: list[tuple[str, str]] = []
        self.streams_opened = 0
        self.forever: list[bool] = []
        """What each ``events()`` call was asked: reconnect for ever?"""
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.auth_fails = False

    @property
    def address(self) -> str:
        return ADDRESS

    @property
    def connection_key(self) -> str:
        return ADDRESS + "#fake"

    def clone(self) -> FakeBackend:
        return self

    def push(self, event: str, /, **payload: Any) -> None:
        self._queue.put_nowait(ComfyEvent(event=event, payload=payload))

    def disconnect(self) -> None:
        self._queue.put_nowait(WebSocketConnectionError("gone"))

    async def events(
        self,
        patterns: Sequence[str] = ("*",),
        *,
        on_connect: Any = None,
        on_disconnect: Any = None,  # every backend takes it; this one never reports a drop
        forever: bool = False,
    ) -> AsyncIterator[ComfyEvent]:
        self.streams_opened += 1
        self.forever.append(forever)
        if self.auth_fails:
            raise WebSocketAuthError("refused")
        if on_connect is not None:
            await on_connect()
        while True:
            item = await self._queue.get()
            if isinstance(item, Exception):
                raise item
            yield item

    async def get_job(self, job_id: str) -> Job:
        self.reads.append(("job", job_id))
        if job_id not in self.jobs:
            raise NotFound("no such job", status_code=404)
        return self.jobs[job_id]

    async def get_input(self, input_id: str) -> Input:
        self.reads.append(("input", input_id))
        return self.inputs[input_id]

    async def get_model(self, model_id: str) -> Model:
        self.reads.append(("model", model_id))
        return self.models[model_id]

    async def submit(self, *a: Any, **k: Any) -> Job:
        raise NotImplementedError

    async def cancel(self, *a: Any, **k: Any) -> Job:
        raise NotImplementedError

    async def outputs(self, *a: Any, **k: Any) -> list:
        raise NotImplementedError

    async def download(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError

    async def upload_input(self, *a: Any, **k: Any) -> Input:
        raise NotImplementedError

    async def upload_model(self, *a: Any, **k: Any) -> Model:
        raise NotImplementedError


def make_listener(backend: FakeBackend, client: FakeEventsClient, **kw: Any) -> ComfyListener:
    kw.setdefault("heartbeat_interval", None)
    kw.setdefault("restart_delay", 0.01)
    kw.setdefault("send_retry_delay", 0.01)
    # No progress interval and a budget of its own: tests of other things see every progress
    # event that is sent before the next one arrives (coalescing is tested on its own).
    kw.setdefault("progress_interval", 0)
    kw.setdefault("progress_events", ProgressBudget(1_000))
    return ComfyListener(backend, events_client=lambda: client, listener_id="unit", **kw)


async def started(listener: ComfyListener) -> asyncio.Task[None]:
    task = asyncio.create_task(listener.run())
    await eventually(lambda: listener.stats.connects >= 1, message="first connect")
    return task
