"""The process-wide waiting layer against the emulator, over real sockets.

One stream per credentials per process, whatever the thread or event loop of the wait; waits end
after an outage even when the REST reads of the reconciliation fail for longer than their budget.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.settings import ComfySettings
from prefect_comfy.waiting.hub import EventHub
from prefect_comfy.waiting.waiters import wait_for_job
from tests.support.keys import OTHER_KEY
from tests.support.waiting import eventually, eventually_sync, scaled
from tests.support.workflows import slow_workflow, tiny_workflow


def settings_for(emulator: Any, key: str, **extra: Any) -> ComfySettings:
    values: dict[str, Any] = {
        "api_key": key,
        "base_url": emulator.url,
        "reconnect_delay": 0.02,
        "max_reconnect_delay": 0.2,
        "max_reconnect_attempts": 20,
    }
    values.update(extra)
    return ComfySettings(**values)


def test_waits_from_three_threads_share_one_websocket(emulator):
    """Three threads, each with its own event loop, wait on one key: the emulator sees ONE socket."""
    backend = CloudBackend(settings=settings_for(emulator, OTHER_KEY))

    async def submit() -> list[str]:
        async with CloudBackend(settings=settings_for(emulator, OTHER_KEY)) as b:
            await EventHub.shared(b).aclose()  # start from no shared stream
            return [(await b.submit(slow_workflow(30))).id for _ in range(3)]

    ids = asyncio.run(submit())
    before = emulator.stats()["ws_connections_total"]
    results: dict[int, Any] = {}
    loops: set[int] = set()

    def wait_in_thread(n: int) -> None:
        async def main() -> Any:
            loops.add(id(asyncio.get_running_loop()))
            return await wait_for_job(OTHER_KEY, ids[n], timeout=60, base_url=emulator.url)

        try:
            results[n] = asyncio.run(main())
        except BaseException as exc:  # reported by the assertion below
            results[n] = exc

    threads = [threading.Thread(target=wait_in_thread, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    hub = EventHub.shared(backend)
    eventually_sync(lambda: hub.stats["pending"] == 3, message="three pending waits")
    for thread in threads:
        thread.join(60)
    assert [results[n].event for n in range(3)] == ["job.completed"] * 3, results
    assert [results[n].payload["id"] for n in range(3)] == ids
    assert len(loops) == 3
    assert emulator.stats()["ws_connections_total"] - before == 1


@pytest.mark.parametrize("timeout", [None, 60.0])
async def test_jobs_ending_during_an_outage_with_failing_rest_end_their_waits(emulator, timeout):
    """Issue 11 item 2: the stream is down while jobs end, and REST answers 503 for longer than the
    client's retry budget. The reconciliation is tried again until it succeeds."""
    settings = settings_for(emulator, OTHER_KEY, max_retries=1)
    async with CloudBackend(settings=settings) as backend:
        hub = EventHub(backend.clone(), linger=0.2)
        try:
            jobs = [await backend.submit(slow_workflow(40)) for _ in range(4)]
            waits = [
                asyncio.ensure_future(hub.wait("job", job.id, timeout=timeout)) for job in jobs
            ]
            await eventually(lambda: hub.connections_opened >= 1 and hub.stats["pending"] == 4)
            await eventually(lambda: hub.stats["rest_lists"] + hub.stats["rest_reads"] >= 1)
            emulator.pause_events()  # outcomes now go nowhere: the link is "down"
            await eventually(
                lambda: all(emulator.state.jobs[j.id].status == "completed" for j in jobs),
                timeout=30,
            )
            # Six 503s: more than one listing's budget (2 tries), so the first reconciliation fails.
            emulator.inject_faults(503, count=6, path="/jobs")
            emulator.drop_connections()
            emulator.resume_events()
            results = await asyncio.wait_for(asyncio.gather(*waits), scaled(30))
            assert [r.event for r in results] == ["job.completed"] * 4
            assert [r.payload["id"] for r in results] == [j.id for j in jobs]
            assert hub.connections_opened >= 2
        finally:
            await hub.aclose()


async def test_covered_waits_need_no_rest_read(emulator):
    """A wait for a job created while the stream was up (``covered_since``) reads nothing."""
    async with CloudBackend(settings=settings_for(emulator, OTHER_KEY)) as backend:
        hub = EventHub(
            backend.clone(), linger=10.0
        )  # the stream must stay up while the jobs are submitted
        try:
            mark = await asyncio.wait_for(hub.ready(), scaled(10))
            jobs = [await backend.submit(tiny_workflow(f"c{i}")) for i in range(5)]
            results = await asyncio.wait_for(
                asyncio.gather(*(hub.wait("job", j.id, covered_since=mark) for j in jobs)), 30
            )
            assert [r.event for r in results] == ["job.completed"] * 5
            assert hub.stats["rest_reads"] == 0 and hub.stats["rest_lists"] == 0
        finally:
            await hub.aclose()
