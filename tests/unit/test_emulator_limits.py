"""Unit tests of the emulator's defences: strict JSON, atomic idempotency claims, the byte bound
of a WebSocket connection, and the v2 error shape."""

from __future__ import annotations

import asyncio

import pytest

from prefect_comfy_emulator.bus import CLOSE_OVERFLOW, Close, Connection
from prefect_comfy_emulator.idempotency import Answer, Claim, IdempotencyRecords
from prefect_comfy_emulator.v2.errors import V2Error, as_v2
from prefect_comfy_emulator.wire import MAX_JSON_DEPTH, ApiError, parse_json
from tests.support.waiting import eventually


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "nested"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": -Infinity}', "-Infinity"),
        (b'{"a": 1e999}', "out of range"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'{"\\udfff": 1}', "surrogate"),
        (b"\xff", "not valid JSON"),
    ],
)
def test_parse_json_refuses_what_it_could_not_answer_back(raw: bytes, words: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_json(raw)
    assert info.value.status == 400 and info.value.code == "invalid_request"
    assert words in info.value.message


def test_parse_json_accepts_the_deepest_allowed_and_plain_numbers() -> None:
    depth = MAX_JSON_DEPTH
    assert parse_json(b"[" * depth + b"]" * depth) is not None
    assert parse_json(b'{"a": 1.5e300, "b": -0.0, "c": "\\u00e9"}')["c"] == "é"


async def test_idempotency_claim_is_atomic_and_released_on_failure() -> None:
    records = IdempotencyRecords()
    key = ("acct_1", "/jobs", "k")
    first = await records.claim(key)
    assert isinstance(first, Claim)
    waiter = asyncio.create_task(records.claim(key))
    await asyncio.sleep(0)
    assert not waiter.done(), "a second request waits while the first holds the key"
    records.settle(first, None)  # a refusal releases the key
    second = await waiter
    assert isinstance(second, Claim)
    records.settle(second, Answer(202, b"{}", "application/json"))
    assert await records.claim(key) == Answer(202, b"{}", "application/json")
    assert records.try_claim(key) is None, "single-use: a used key is refused at once"
    assert len(records) == 1
    records.clear()
    assert isinstance(records.try_claim(key), Claim)


async def test_connection_bound_counts_bytes_until_sent() -> None:
    cut: list[bool] = []
    conn = Connection("acct_1", "ses_1", None, asyncio.Queue(100), max_bytes=10, close_timeout=0.01)
    conn.cut = lambda: cut.append(True)
    assert conn.offer("12345") and conn.offer("678")
    frame = conn.queue.get_nowait()  # the sender took it, but the socket has not yet
    assert conn.pending_bytes == 8
    assert not conn.offer("abc"), "5 + 3 + 3 bytes are over the bound of 10"
    assert conn.closing and isinstance(conn.queue.get_nowait(), Close)
    conn.sent(frame)
    assert conn.peak_bytes == 8
    await eventually(lambda: cut, message="a close the client does not take in time cuts it")
    assert cut == [True]
    assert CLOSE_OVERFLOW == 1013


def test_v2_errors_have_an_object_details_and_a_request_id() -> None:
    error = as_v2(ApiError(422, "validation_error", "bad", [{"field": "x", "message": "m"}]))
    assert isinstance(error, V2Error) and error.code == "invalid_request"
    assert error.body() == {
        "error": {
            "code": "invalid_request",
            "message": "bad",
            "details": {"errors": [{"field": "x", "message": "m"}]},
        }
    }
    assert error.headers["X-Comfy-Request-Id"].startswith("req_")
    assert as_v2(ApiError(500, "internal_error", "x")).code == "upstream_error"
    assert as_v2(ApiError(413, "invalid_request", "x")).code == "payload_too_large"
