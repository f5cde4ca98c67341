"""A listener running in the test's loop, uploads to the emulator, and deployments with a trigger."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.listener.forwarder import ComfyListener
from prefect_comfy.models import ComfyEvent
from tests.support.keys import API_KEY
from tests.support.triggers import apply_live
from tests.support.waiting import eventually, scaled


def comfy_http(emulator: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=emulator.api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
    )


async def upload(emulator: Any, kind: str, name: str, tags: list[str], **fields: str) -> dict:
    async with comfy_http(emulator) as http:
        response = await http.post(
            f"/{kind}s",
            files={"file": (name, PNG, "application/octet-stream")},
            data={"name": name, "tags": ",".join(tags), **fields},
        )
    assert response.status_code == 201, response.text
    return response.json()


async def apply(flow_obj: Any, trigger: Any, probe: str, t: str) -> uuid.UUID:
    """A deployment of ``flow_obj`` with ``trigger``, once the trigger is live: a probe event of
    ``probe`` (``input.ready``, ``job.completed`` …) tagged ``t`` made a run (left out by
    :func:`tests.support.triggers.runs_of`)."""
    return await apply_live(
        flow_obj,
        trigger,
        lambda pid: ComfyEvent(event=probe, payload={"id": pid, "tags": [t]}),
        address="http://probe.invalid",
    )


class Running:
    """A listener running as a task of the test's loop, on a backend of its own."""

    def __init__(self, emulator: Any, name: str, **options: Any) -> None:
        self.backend = CloudBackend(API_KEY, emulator.url)
        options.setdefault("heartbeat_interval", None)
        self.listener = ComfyListener(self.backend, listener_id=name, **options)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ComfyListener:
        self.task = asyncio.create_task(self.listener.run())
        await eventually(lambda: self.listener.stats.connects >= 1, message="listener connected")
        return self.listener

    async def __aexit__(self, *exc: object) -> None:
        self.listener.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, scaled(30))
        await self.backend.aclose()


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
