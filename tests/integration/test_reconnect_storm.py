"""Waits during a reconnect storm that never ends (issue 11 item 3), against the emulator.

The link flaps for ever: every second the emulator drops the WebSocket and closes the next
connections right after ``connected``, before the client subscribes, so the stream never stays up;
events are held (paused), so only REST can tell how the jobs ended, and REST works. Reconciliation
used to run only after a connect that subscribed: waits for jobs that had completed ran to their
timeout. Now the waiting layer reads the pending jobs' truth while the stream is down, and the
waits end within seconds of their jobs. With a small reconnect budget, a direct stream's error says
what kept failing, and the waits' stream (which never gives up) fails none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.exceptions import JobTimedOut, WebSocketConnectionError
from prefect_comfy.settings import ComfySettings
from prefect_comfy.waiting.hub import EventHub
from tests.support.keys import API_KEY
from tests.support.listener_fakes import FakeEventsClient, make_listener
from tests.support.waiting import eventually, scaled
from tests.support.workflows import slow_workflow

JOBS = 10
FLAP_EVERY = 1.0


def storm_settings(emulator: Any, attempts: int) -> ComfySettings:
    return ComfySettings(
        api_key=API_KEY,
        base_url=emulator.url,
        reconnect_delay=0.05,
        max_reconnect_delay=0.5,
        max_reconnect_attempts=attempts,
    )


async def flap_for_ever(emulator: Any, stop: asyncio.Event) -> int:
    """Drop the link every second; the next connections close during the handshake."""
    flaps = 0
    while not stop.is_set():
        await asyncio.sleep(FLAP_EVERY)  # the storm's pace, not a synchronisation
        await asyncio.to_thread(emulator.close_after_connected, 1000)
        await asyncio.to_thread(emulator.drop_connections)
        flaps += 1
    return flaps


async def test_waits_end_while_the_stream_never_stays_up(emulator) -> None:
    async with CloudBackend(settings=storm_settings(emulator, attempts=1000)) as backend:
        hub = EventHub(backend.clone(), linger=0.2)
        stop = asyncio.Event()
        try:
            jobs = [await backend.submit(slow_workflow(20, step_seconds=0.1)) for _ in range(JOBS)]
            await asyncio.to_thread(emulator.pause_events)  # outcomes only over REST
            storm = asyncio.create_task(flap_for_ever(emulator, stop))
            started = time.monotonic()
            outcomes = await asyncio.gather(
                *(hub.wait("job", job.id, timeout=60) for job in jobs), return_exceptions=True
            )
            elapsed = time.monotonic() - started
            stop.set()
            flaps = await storm
        finally:
            stop.set()
            await asyncio.to_thread(emulator.reset_faults)
            await asyncio.to_thread(emulator.close_after_connected, 0)
            await hub.aclose()
    assert [getattr(o, "event", repr(o)) for o in outcomes] == ["job.completed"] * JOBS
    # The jobs take 2 s; reads while the stream is down are 1, 2, 4, then 5 s apart (the
    # waits used to run to their 60 s timeout).
    assert elapsed < 20, f"the waits took {elapsed:.1f}s"
    assert flaps >= 2 and hub.stats["rest_polls_while_down"] >= 1, hub.stats
    print(f"\n{JOBS} waits ended in {elapsed:.1f}s during {flaps} flaps; {hub.stats}")


async def test_a_spent_budget_ends_a_direct_stream_and_no_wait(emulator, caplog) -> None:
    """A budget of 3, spent over and over: a direct ``events()`` caller gets an error that says
    what kept failing; the waiting hub asks for a stream that never gives up (issue 18: one
    reconnect loop), so its wait goes on over REST until its own timeout (issue 20, #6) and the
    hub never opens a second stream."""
    async with CloudBackend(settings=storm_settings(emulator, attempts=3)) as backend:
        hub = EventHub(backend.clone(), linger=0.2)
        stop = asyncio.Event()

        async def direct() -> None:
            async for _ in backend.events(["job.*"]):
                pass

        try:
            job = await backend.submit(slow_workflow(600, step_seconds=0.1))  # a minute
            storm = asyncio.create_task(flap_for_ever(emulator, stop))
            gone, waited = await asyncio.gather(
                asyncio.wait_for(direct(), scaled(60)),
                hub.wait("job", job.id, timeout=15),
                return_exceptions=True,
            )
            stop.set()
            await storm
        finally:
            stop.set()
            await asyncio.to_thread(emulator.close_after_connected, 0)
            await hub.aclose()
    assert isinstance(waited, JobTimedOut), waited
    assert hub.streams_opened == 1 and hub.stats["rest_polls_while_down"] >= 1, hub.stats
    assert isinstance(gone, WebSocketConnectionError), gone
    assert "3 reconnect attempt(s) failed in a row" in str(gone), gone
    assert "what kept failing:" in str(gone) and "closed" in str(gone), gone
    assert API_KEY not in caplog.text + str(gone)


async def test_the_listener_rides_a_spent_budget_on_the_streams_one_loop(emulator, caplog) -> None:
    """A reconnect budget of 1, spent five times over: the listener asks the stream to reconnect
    for ever, so the stream never gives up and the listener never opens a second one (it used to
    wrap the stream's budgeted loop in a loop of its own: nested reconnects, nested pauses)."""
    caplog.set_level(logging.INFO, logger="prefect_comfy.transport.reconnect")
    client = FakeEventsClient()
    async with CloudBackend(settings=storm_settings(emulator, attempts=1)) as backend:
        listener = make_listener(backend, client)  # type: ignore[arg-type]
        task = asyncio.create_task(listener.run())
        try:
            await eventually(lambda: listener.stats.connects == 1, message="connected")
            await asyncio.to_thread(emulator.close_after_connected, 5)
            await asyncio.to_thread(emulator.drop_connections)
            await eventually(
                lambda: listener.stats.connects == 2, timeout=scaled(30), message="reconnected"
            )
        finally:
            listener.stop()
            await asyncio.wait_for(task, scaled(10))
            await asyncio.to_thread(emulator.close_after_connected, 0)
    assert listener.stats.disconnects == 1 and listener.stats.stream_restarts == 0
    assert "is gone" not in caplog.text, caplog.text
    assert "(attempt 5)" in caplog.text, caplog.text
