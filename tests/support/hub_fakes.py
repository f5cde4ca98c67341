"""An in-memory server for the waiting layer's unit tests: a fake backend with a scripted event stream."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.exceptions import (
    NotFound,
)
from prefect_comfy.models import ComfyEvent, Input, Job, Model


class World:
    """What the fake server knows: resources, the live event queue, counters."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.inputs: dict[str, Input] = {}
        self.models: dict[str, Model] = {}
        self.queue = Mailbox()
        self.streams = 0
        self.connects = 0
        self.reads = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.read_gate: asyncio.Event | None = None
        self.closed_backends = 0
        self.patterns: list[list[str]] = []

    def push(self, name: str, rid: str, eid: str | None = None, **payload: Any) -> None:
        self.queue.put_nowait(ComfyEvent(event=name, payload={"id": rid, **payload}, id=eid))


class FakeBackend(ComfyBackend):
    kind = "fake"

    def __init__(self, world: World, key: str) -> None:
        self.world = world
        self.key = key
        self.closed = False

    @property
    def address(self) -> str:
        return "memory://fake"

    @property
    def connection_key(self) -> str:
        return self.key

    def clone(self) -> FakeBackend:
        return FakeBackend(self.world, self.key)

    async def _read(self, table: dict[str, Any], rid: str) -> Any:
        w = self.world
        w.reads += 1
        w.in_flight += 1
        w.max_in_flight = max(w.max_in_flight, w.in_flight)
        try:
            if w.read_gate is not None:
                await w.read_gate.wait()
            await asyncio.sleep(0)
            if rid not in table:
                raise NotFound(f"{rid} not found", status_code=404, error_code="not_found")
            return table[rid]
        finally:
            w.in_flight -= 1

    async def get_job(self, job_id: str) -> Job:
        return await self._read(self.world.jobs, job_id)

    async def get_input(self, input_id: str) -> Input:
        return await self._read(self.world.inputs, input_id)

    async def get_model(self, model_id: str) -> Model:
        return await self._read(self.world.models, model_id)

    async def events(self, patterns=("*",), *, on_connect=None, on_disconnect=None):
        w = self.world
        w.streams += 1
        w.patterns.append(list(patterns))
        while True:
            w.connects += 1
            if on_connect is not None:
                asyncio.create_task(on_connect())  # noqa: RUF006 - as ComfyWebSocket does
            while True:
                item = await w.queue.get()
                if item is DROP:
                    break  # "reconnect"
                if isinstance(item, BaseException):
                    raise item
                yield item

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.world.closed_backends += 1

    async def submit(self, *a, **k):
        raise NotImplementedError

    async def cancel(self, *a, **k):
        raise NotImplementedError

    async def outputs(self, *a, **k):
        raise NotImplementedError

    async def download(self, *a, **k):
        raise NotImplementedError

    async def upload_input(self, *a, **k):
        raise NotImplementedError

    async def upload_model(self, *a, **k):
        raise NotImplementedError


DROP = object()


class Mailbox:
    """The fake server's live event queue; thread-safe, as the process-wide hub reads it on the
    waiting layer's own loop while the test pushes from its loop."""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._lock = threading.Lock()
        self._reader: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def put_nowait(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)
            reader = self._reader
        if reader is not None:
            reader[0].call_soon_threadsafe(reader[1].set)

    async def get(self) -> Any:
        while True:
            with self._lock:
                if self._items:
                    return self._items.pop(0)
                wake = asyncio.Event()
                self._reader = (asyncio.get_running_loop(), wake)
            await wake.wait()
