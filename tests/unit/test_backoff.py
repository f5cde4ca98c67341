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
