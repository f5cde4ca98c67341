"""The REST retry loop: what is retried, how long it waits, when it gives up."""

from __future__ import annotations

import email.utils
import logging
import random

import pytest

from prefect_comfy.exceptions import (
    ComfyTransportError,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
)
from prefect_comfy.transport.retry import RetryPolicy, parse_retry_after


class Recorder:
    """A sleep that does not wait, and remembers what it was asked."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def failing(errors: list[BaseException], result: str = "ok"):
    calls = []

    async def attempt() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return attempt, calls


def test_parse_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.25 ") == 0.25
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("later") is None
    date = email.utils.formatdate(1000.0, usegmt=True)
    assert parse_retry_after(date, now=990.0) == pytest.approx(10.0)
    assert parse_retry_after(date, now=2000.0) == 0.0


@pytest.mark.parametrize(
    "error",
    [
        ServerError("x", status_code=503),
        RateLimited("x", status_code=429),
        ComfyTransportError("reset"),
    ],
)
async def test_retryable_errors_are_retried(error: BaseException) -> None:
    sleep = Recorder()
    attempt, calls = failing([error, error])
    assert await RetryPolicy(max_retries=3, sleep=sleep).call(attempt) == "ok"
    assert len(calls) == 3
    assert len(sleep.delays) == 2


@pytest.mark.parametrize(
    "error",
    [NotFound("x", status_code=404), InvalidRequest("x", status_code=422), ValueError("bug")],
)
async def test_other_errors_are_raised_at_once(error: BaseException) -> None:
    sleep = Recorder()
    attempt, calls = failing([error])
    with pytest.raises(type(error)):
        await RetryPolicy(max_retries=3, sleep=sleep).call(attempt)
    assert len(calls) == 1
    assert sleep.delays == []


async def test_budget_exhaustion_raises_the_last_error() -> None:
    errors: list[BaseException] = [ServerError(f"e{i}", status_code=500 + i) for i in range(4)]
    attempt, calls = failing(errors)
    with pytest.raises(ServerError) as info:
        await RetryPolicy(max_retries=2, sleep=Recorder()).call(attempt)
    assert str(info.value) == "e2"
    assert len(calls) == 3


async def test_zero_retries_means_one_attempt() -> None:
    attempt, calls = failing([ServerError("e", status_code=500)])
    with pytest.raises(ServerError):
        await RetryPolicy(max_retries=0, sleep=Recorder()).call(attempt)
    assert len(calls) == 1


async def test_retry_after_is_honoured_and_capped() -> None:
    sleep = Recorder()
    attempt, _ = failing(
        [
            RateLimited("x", status_code=429, retry_after=1.5),
            RateLimited("x", status_code=429, retry_after=99.0),
            RateLimited("x", status_code=429, retry_after=None),
        ]
    )
    policy = RetryPolicy(max_retries=5, max_delay=10.0, initial_delay=0.5, sleep=sleep)
    await policy.call(attempt)
    assert sleep.delays[:2] == [1.5, 10.0]
    # Without a hint: the backoff, which kept counting (third attempt: base 2.0, jitter 1.0–2.0).
    assert 1.0 <= sleep.delays[2] <= 2.0


async def test_backoff_grows_with_jitter_and_stays_under_the_cap() -> None:
    sleep = Recorder()
    attempt, _ = failing([ServerError("x", status_code=502) for _ in range(6)])
    policy = RetryPolicy(
        max_retries=6, max_delay=4.0, initial_delay=0.5, sleep=sleep, rng=random.Random(1)
    )
    await policy.call(attempt)
    bases = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for delay, base in zip(sleep.delays, bases, strict=True):
        assert base / 2 <= delay <= base


async def test_each_retry_is_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="prefect_comfy.transport.retry")
    attempt, _ = failing([ServerError("x", status_code=503)])
    await RetryPolicy(max_retries=1, sleep=Recorder()).call(attempt, what="POST /jobs")
    (record,) = [r for r in caplog.records if r.name == "prefect_comfy.transport.retry"]
    assert record.levelno == logging.INFO
    assert "POST /jobs" in record.getMessage()
    assert "HTTP 503" in record.getMessage()
