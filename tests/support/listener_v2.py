"""The real Prefect events client, counting what a listener sends through it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from prefect.events.clients import get_events_client


class Counting:
    """The real Prefect events client, counting what the listener sends through it."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[Any]:
        async with get_events_client() as client:
            emit = client.emit

            async def counted(event: Any) -> None:
                self.sent.append(event)
                await emit(event)

            client.emit = counted  # type: ignore[method-assign]
            yield client

    def terminal(self, job_id: str) -> list[str]:
        return [
            e.event
            for e in self.sent
            if e.event in TERMINAL and e.resource.id == f"comfy.job.{job_id}"
        ]


TERMINAL = {"comfy.job.completed", "comfy.job.failed", "comfy.job.cancelled"}
