"""In-memory seams for the listener's unit tests: a fake Prefect events client, and a listener made
to run on the memory server (tests/support/memory.py) quickly."""

from __future__ import annotations

import asyncio
from typing import Any

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.listener.forwarder import ComfyListener
from prefect_comfy.orchestration.events.budget import ProgressBudget
from tests.support.waiting import eventually


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


def make_listener(backend: ComfyBackend, client: FakeEventsClient, **kw: Any) -> ComfyListener:
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
