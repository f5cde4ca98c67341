"""Time limits that never lose a cancellation (asyncio.wait_for does before Python 3.12)."""

from __future__ import annotations

import asyncio

import pytest

from prefect_comfy.transport.deadlines import bounded, wait_event, within
from tests.support.waiting import eventually


async def test_within_returns_the_result():
    assert await within(asyncio.sleep(0, result=7), 5) == 7
    assert await within(asyncio.sleep(0, result=8), None) == 8


async def test_within_raises_timeout_error():
    with pytest.raises(asyncio.TimeoutError):
        await within(asyncio.Event().wait(), 0.01)


async def test_a_cancellation_in_the_same_turn_as_the_result_is_raised():
    # The result and the cancellation arrive in one loop turn: asyncio.wait_for on 3.11 returns
    # the result and drops the cancellation.
    result: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    entered = asyncio.Event()

    async def inner() -> int:
        entered.set()
        return await result

    task = asyncio.create_task(within(inner(), 30))
    await eventually(entered.is_set, message="the inner await started")
    result.set_result(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_wait_event():
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True
    assert await wait_event(event, None) is True


async def test_bounded_leaves_work_deaf_to_cancellation_behind():
    release = asyncio.Event()

    async def deaf() -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()  # ignores the cancellation until let go
        return "late"

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await bounded(deaf(), 0.1)
    assert loop.time() - started < 1.0  # within() would wait here until the work ends
    release.set()


async def test_bounded_returns_and_raises_what_the_work_does():
    async def value() -> int:
        return 7

    async def boom() -> None:
        raise ValueError("boom")

    assert await bounded(value(), 1) == 7
    with pytest.raises(ValueError, match="boom"):
        await bounded(boom(), 1)
