"""Waiting over the shared event stream, against the emulator on real sockets.

Drops, duplicates, malformed frames and wrong keys come from the emulator's fault switches.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import httpx
import pytest

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.backends.cloud.ws import ComfyWebSocket
from prefect_comfy.exceptions import JobTimedOut, WebSocketAuthError
from prefect_comfy.models import ComfyEvent
from prefect_comfy.settings import ComfySettings
from prefect_comfy.waiting.hub import EventHub
from prefect_comfy.waiting.waiters import wait_for_input_ready, wait_for_job, wait_for_model_ready
from tests.support.keys import API_KEY, WRONG_KEY
from tests.support.waiting import eventually, scaled
from tests.support.workflows import failing_workflow, slow_workflow, tiny_workflow

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def fast_settings(emulator: Any) -> ComfySettings:
    return ComfySettings(
        api_key=API_KEY,
        base_url=emulator.url,
        reconnect_delay=0.02,
        max_reconnect_delay=0.2,
        max_reconnect_attempts=20,
        ping_interval=5,
        ping_timeout=5,
    )


@pytest.fixture
async def backend(emulator):
    async with CloudBackend(settings=fast_settings(emulator)) as b:
        yield b


@pytest.fixture
async def hub(backend):
    """A hub of its own (not the shared one), so that each test counts its own connections."""
    own = EventHub(backend.clone(), linger=0.2)
    yield own
    await own.aclose()


@pytest.fixture(autouse=True)
def _no_key_in_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="prefect_comfy")
    yield
    assert API_KEY not in caplog.text and WRONG_KEY not in caplog.text


async def submit_many(backend: CloudBackend, workflows: list[dict[str, Any]]) -> list[str]:
    """Submit in batches of 50 (``POST /jobs/batch``); the ids in the workflows' order."""
    batches = [workflows[i : i + 50] for i in range(0, len(workflows), 50)]
    answers = await asyncio.gather(
        *(backend.client.create_batch([{"workflow": wf} for wf in batch]) for batch in batches)
    )
    return [job.id for answer in answers for job in answer.jobs]


async def test_submit_then_wait_completed(backend, hub):
    job = await backend.submit(tiny_workflow("wait"))
    result = await asyncio.wait_for(hub.wait("job", job.id, timeout=30), scaled(30))
    assert result.event == "job.completed" and result.payload["id"] == job.id
    assert result.payload["outputs"] and result.payload["outputs"][0]["download_url"]


async def test_failed_and_cancelled_are_returned(backend, hub):
    failing = await backend.submit(failing_workflow("kaput", code="node_error"))
    slow = await backend.submit(slow_workflow(200))
    await backend.cancel(slow.id)
    failed, cancelled = await asyncio.wait_for(
        asyncio.gather(hub.wait("job", failing.id), hub.wait("job", slow.id)), 30
    )
    assert failed.event == "job.failed" and "kaput" in str(failed.payload.get("error"))
    assert cancelled.event == "job.cancelled"


async def test_progress_callbacks_arrive_in_order_once(backend, emulator):
    job = await backend.submit(slow_workflow(6))
    seen: list[ComfyEvent] = []
    result = await asyncio.wait_for(
        wait_for_job(
            api_key=API_KEY,
            job_id=job.id,
            timeout=30,
            include_progress=True,
            on_progress=seen.append,
            base_url=emulator.url,
        ),
        30,
    )
    assert result.event == "job.completed"
    assert seen and all(e.event == "job.progress" for e in seen)
    values = [e.payload["progress"] for e in seen]
    assert values == sorted(values)
    ids = [e.id for e in seen]
    assert len(ids) == len(set(ids))


async def test_progress_is_not_delivered_without_include_progress(backend, emulator):
    job = await backend.submit(slow_workflow(4))
    seen: list[ComfyEvent] = []
    result = await wait_for_job(
        api_key=API_KEY, job_id=job.id, timeout=30, on_progress=seen.append, base_url=emulator.url
    )
    assert result.event == "job.completed" and seen == []


async def test_input_and_model_ready(backend, emulator):
    inp = await backend.upload_input(PNG, name="wait-input.png")
    mod = await backend.upload_model(b"\0" * 128, type="lora", name="wait-lora.safetensors")
    ready_input, ready_model = await asyncio.wait_for(
        asyncio.gather(
            wait_for_input_ready(API_KEY, inp.id, timeout=30, base_url=emulator.url),
            wait_for_model_ready(API_KEY, mod.id, timeout=30, base_url=emulator.url),
        ),
        30,
    )
    assert (ready_input.event, ready_input.payload["id"]) == ("input.ready", inp.id)
    assert (ready_model.event, ready_model.payload["id"]) == ("model.ready", mod.id)


async def test_timeout_names_the_last_state(backend, hub):
    job = await backend.submit(slow_workflow(400))
    try:
        with pytest.raises(JobTimedOut) as caught:
            await hub.wait("job", job.id, timeout=1.5)
        assert caught.value.status in ("pending", "running")
    finally:
        await backend.cancel(job.id)


async def test_wrong_key_is_an_auth_error_without_the_key(emulator):
    with pytest.raises(WebSocketAuthError) as caught:
        await asyncio.wait_for(
            wait_for_job(api_key=WRONG_KEY, job_id="job_nope", timeout=20, base_url=emulator.url),
            20,
        )
    assert WRONG_KEY not in str(caught.value) and "check the key" in str(caught.value)
    for auth in ("header", "query"):
        ws = ComfyWebSocket(WRONG_KEY, emulator.url, auth=auth)
        with pytest.raises(WebSocketAuthError) as caught:
            async with ws:
                await ws.subscribe(["job.*"])
        assert WRONG_KEY not in str(caught.value) and WRONG_KEY not in repr(ws)


async def test_random_drops_during_200_waits(backend, hub, emulator):
    rng = random.Random(20240515)
    workflows = [failing_workflow(f"f{i}") if i % 7 == 0 else slow_workflow(2) for i in range(200)]
    ids = await submit_many(backend, workflows)
    waits = [asyncio.ensure_future(hub.wait("job", jid, timeout=60)) for jid in ids]
    dropped_while_waiting = 0
    for drops in range(6):
        await eventually(lambda n=drops: hub.connections_opened > n, timeout=10)
        await asyncio.sleep(rng.uniform(0.01, 0.3))  # a random moment (fault timing, not a wait)
        dropped_while_waiting += hub.stats["pending"] > 0
        emulator.drop_connections()
    results = await asyncio.wait_for(asyncio.gather(*waits), scaled(60))
    expected = ["job.failed" if i % 7 == 0 else "job.completed" for i in range(200)]
    assert [r.event for r in results] == expected
    assert [r.payload["id"] for r in results] == ids
    assert dropped_while_waiting == 6 and hub.connections_opened >= 7


async def test_duplicated_events_reach_a_waiter_once(backend, emulator):
    emulator.duplicate_events(True)
    async with ComfyWebSocket(settings=fast_settings(emulator)) as ws:
        await ws.subscribe(["job.*"])
        stream = ws.events()
        first = await backend.submit(slow_workflow(3))
        second = await backend.submit(tiny_workflow("dup"))
        got: list[ComfyEvent] = []
        ended: set[str] = set()
        while ended != {first.id, second.id}:
            event = await asyncio.wait_for(stream.__anext__(), scaled(20))
            got.append(event)
            if event.is_terminal:
                ended.add(event.resource_id)
    terminals = [e.resource_id for e in got if e.is_terminal]
    assert sorted(terminals) == sorted([first.id, second.id])
    ids = [e.id for e in got]
    assert len(ids) == len(set(ids))
    progress = [e for e in got if e.event == "job.progress" and e.resource_id == first.id]
    assert progress


async def test_duplicates_through_the_hub(backend, hub, emulator):
    emulator.duplicate_events(True)
    job = await backend.submit(slow_workflow(4))
    seen: list[ComfyEvent] = []
    result = await asyncio.wait_for(hub.wait("job", job.id, on_progress=seen.append), scaled(30))
    assert result.event == "job.completed"
    assert len({e.id for e in seen}) == len(seen) > 0


async def test_malformed_server_frame_is_logged_and_skipped(backend, emulator, caplog):
    async with ComfyWebSocket(settings=fast_settings(emulator)) as ws:
        await ws.subscribe(["job.*"])
        stream = ws.events()
        async with httpx.AsyncClient(base_url=emulator.url) as control:
            answer = await control.post("/_emulator/malformed-frame")
            assert answer.json()["connections"] >= 1
        job = await backend.submit(tiny_workflow("raw"))
        while True:
            event = await asyncio.wait_for(stream.__anext__(), scaled(20))
            if event.is_terminal and event.resource_id == job.id:
                break
        assert ws.connections_opened == 1
    assert any(
        "malformed" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
    )


async def test_1000_concurrent_wait_for_job_share_one_connection(backend, emulator):
    ids = await submit_many(backend, [tiny_workflow("k") for _ in range(1000)])
    await EventHub.shared(backend).aclose()  # start from no shared stream
    before = emulator.stats()["ws_connections_total"]
    results = await asyncio.wait_for(
        asyncio.gather(
            *(wait_for_job(API_KEY, jid, timeout=120, base_url=emulator.url) for jid in ids)
        ),
        120,
    )
    assert all(r.event == "job.completed" for r in results)
    assert emulator.stats()["ws_connections_total"] - before == 1


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts the REST requests of a backend and its clones."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize(("waits", "most"), [(3, 5), (1_500, 17)])
async def test_reconciling_costs_the_cheaper_of_reading_and_listing(waits, most):
    """Issue 21 section 1: after a drop, 3 waits against 1,500 unfinished jobs read the 3 (one
    page says the backlog); 1,500 waits list the 15 pages (and the running one)."""
    from prefect_comfy_emulator import EmulatorConfig, EmulatorServer

    config = EmulatorConfig(api_keys=[API_KEY], step_duration=3600, concurrency=1, seed=3)
    with EmulatorServer(config) as emu:
        counting = CountingTransport()
        backend = CloudBackend(settings=fast_settings(emu), transport=counting)
        hub = EventHub(backend.clone(), linger=5)
        try:
            ids: list[str] = []
            for _ in range(30):
                batch = await backend.client.create_batch([{"workflow": tiny_workflow()}] * 50)
                ids += [job.id for job in batch.jobs]
            waited = ids[:waits]  # the oldest: on the last pages of a listing
            tasks = [asyncio.ensure_future(hub.wait("job", jid)) for jid in waited]
            await eventually(lambda: hub.stats["pending"] == waits, timeout=30)
            await eventually(lambda: not hub.stats["reconciling"], timeout=30)
            before, connections = counting.requests, hub.connections_opened
            polls, lists = hub.stats["rest_polls_while_down"], hub.stats["rest_lists"]
            emu.drop_connections()
            await eventually(lambda: hub.connections_opened > connections, timeout=30)
            await eventually(lambda: counting.requests > before, timeout=30)
            await eventually(lambda: not hub.stats["reconciling"], timeout=30)
            # One round after the reconnect, one per poll while down (on a slow machine), and one
            # more when the answers of a round that began before the reconnect came back after it
            # (they are stale: that round is done again). Each round costs at most ``most``.
            down = hub.stats["rest_polls_while_down"] - polls
            rounds = max(1, hub.stats["rest_lists"] - lists)
            assert rounds <= 2 + down, hub.stats
            assert counting.requests - before <= most * max(rounds, 1 + down), hub.stats
            assert not any(task.done() for task in tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await hub.aclose()
            await backend.aclose()
