"""Jittered exponential backoff."""

from __future__ import annotations

import random

from prefect_comfy.transport.backoff import Backoff


def test_delays_grow_and_stay_within_equal_jitter_bounds():
    backoff = Backoff(initial=1.0, maximum=8.0, rng=random.Random(7))
    for attempt in range(8):
        base = min(8.0, 2.0**attempt)
        delay = backoff.next_delay()
        assert base / 2 <= delay <= base
    assert backoff.attempt == 8


def test_delays_are_capped():
    backoff = Backoff(initial=0.5, maximum=2.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(20)]
    assert max(delays) <= 2.0 and min(delays[5:]) >= 1.0


def test_reset_starts_again_from_initial():
    backoff = Backoff(initial=1.0, maximum=30.0, rng=random.Random(0))
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempt == 0
    assert 0.5 <= backoff.next_delay() <= 1.0


def test_seeded_rng_is_deterministic():
    a = Backoff(rng=random.Random(3))
    b = Backoff(rng=random.Random(3))
    assert [a.next_delay() for _ in range(5)] == [b.next_delay() for _ in range(5)]


def test_jitter_spreads_clients():
    delays = {round(Backoff(initial=1.0, rng=random.Random(i)).next_delay(), 6) for i in range(20)}
    assert len(delays) > 10


def test_without_jitter_the_schedule_is_exact_and_grows_by_the_factor():
    """The poll schedules (the listener's job finding, the shared poll) grow x1.5, unjittered."""
    quiet = Backoff(initial=1.0, maximum=5.0, factor=1.5, jitter=False)
    assert [quiet.next_delay() for _ in range(6)] == [1.0, 1.5, 2.25, 3.375, 5.0, 5.0]
    assert quiet.waited == 18.125
    quiet.reset()
    assert (quiet.attempt, quiet.waited, quiet.next_delay()) == (0, 0.0, 1.0)


def test_a_loop_that_never_gives_up_keeps_its_cap():
    """The listener's reconnect budget is sys.maxsize: past 2**1024 the growth overflowed a float."""
    backoff = Backoff(initial=1.0, maximum=60.0, rng=random.Random(0), attempt=5_000)
    assert 30.0 <= backoff.next_delay() <= 60.0
    assert Backoff(maximum=2.0, jitter=False, attempt=10**6).next_delay() == 2.0


async def test_pause_sleeps_the_next_delay_and_says_it(monkeypatch):
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr("prefect_comfy.transport.backoff.asyncio.sleep", sleep)
    pauses = Backoff(initial=0.25, maximum=1.0, jitter=False)
    assert [await pauses.pause() for _ in range(4)] == [0.25, 0.5, 1.0, 1.0] == slept
    assert pauses.waited == 2.75
