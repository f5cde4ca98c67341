"""Unit tests of the v2 backend's pieces on in-memory seams (httpx.MockTransport)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from prefect_comfy.backends.registry import _kind_of_fields, block_types
from prefect_comfy.backends.v2 import follow, mapping
from prefect_comfy.backends.v2.assets import blake3_of
from prefect_comfy.backends.v2.backend import V2Backend, _metadata_text
from prefect_comfy.backends.v2.block import ComfyV2Credentials
from prefect_comfy.exceptions import (
    ComfyAPIError,
    ComfyConfigError,
    ComfyProtocolError,
    InvalidRequest,
    InvalidWorkflow,
    NotFound,
    TooManyStreams,
)
from prefect_comfy.transport.retry import RetryPolicy
from tests.support.waiting import scaled

KEY = "v2-unit-secret-key"
ORIGIN = "http://127.0.0.1:8189"


def error(status: int, code: str, message: str = "no", **extra) -> httpx.Response:
    body = {"error": {"code": code, "message": message, **extra}}
    return httpx.Response(status, json=body, headers={"X-Comfy-Request-Id": "req_unit1"})


async def no_wait(delay: float) -> None:
    return None


def backend_of(handler) -> V2Backend:
    backend = V2Backend(ORIGIN, KEY, transport=httpx.MockTransport(handler))
    backend.http.retry = RetryPolicy(max_retries=2, sleep=no_wait)
    return backend


def job(status: str, **extra) -> dict:
    return {"id": "j1", "status": status, **extra}


# -- mapping --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("v2", "ours"),
    [
        ("queued", "pending"),
        ("running", "running"),
        ("canceling", "running"),
        ("succeeded", "completed"),
        ("failed", "failed"),
        ("canceled", "cancelled"),
        ("expired", "failed"),
    ],
)
def test_statuses_map(v2: str, ours: str) -> None:
    assert mapping.job_of(job(v2)).status == ours


def test_a_failure_names_node_and_class() -> None:
    error_ = {
        "code": "node_execution_error",
        "message": "bad",
        "node_id": 7,
        "class_type": "KSampler",
    }
    parsed = mapping.job_of(job("failed", error=error_)).error
    assert parsed is not None and parsed.node_id == "7" and "KSampler" in (parsed.message or "")


def test_progress_is_percent_below_100_with_node_and_steps() -> None:
    raw = {
        "value": 0.5,
        "current_node": "3",
        "current_node_class": "KSampler",
        "step": 5,
        "steps": 10,
    }
    payload = mapping.progress_payload("j1", raw)
    assert payload == {
        "id": "j1", "status": "running", "progress": 50.0, "node_id": "3",
        "node_class": "KSampler", "step": 5, "steps": 10,
    }  # fmt: skip
    assert mapping.progress_payload("j1", {"value": 1.0})["progress"] < 100


def test_metadata_as_text_is_read_and_matched() -> None:
    raw = job("queued", metadata=json.dumps({"tag:a": "1", "prefect_idempotency_key": "k"}))
    assert mapping.job_of(raw).tags == ["a"]
    assert mapping.matches(raw, {"prefect_idempotency_key": "k"})
    assert not mapping.matches(job("queued"), {"prefect_idempotency_key": "k"})


def test_metadata_text_fits_1024_bytes() -> None:
    labels = {"prefect_idempotency_key": "k", **{f"tag:{'x' * 100}{i}": "1" for i in range(12)}}
    text = _metadata_text(labels)
    assert len(text.encode()) <= 1024 and json.loads(text)["prefect_idempotency_key"] == "k"


def test_sse_parser_skips_comments_and_joins_data() -> None:
    parser = mapping.SseParser()
    lines = [": keep-alive", "", "event: progress", 'data: {"value":', "data: 0.5}", ""]
    assert [item for line in lines if (item := parser.feed(line))] == [("progress", {"value": 0.5})]


def test_blake3_of_bytes_and_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert blake3_of(b"abc") == blake3_of(tmp_path / "f")
    assert blake3_of(b"abc")[0].startswith("blake3:") and blake3_of(b"abc")[1] == 3


# -- errors ---------------------------------------------------------------------------------------
async def test_invalid_workflow_names_the_node_and_keeps_the_request_id() -> None:
    details = {"node_errors": {"4": [{"field": "seed", "reason": "required input missing"}]}}
    backend = backend_of(lambda r: error(422, "invalid_workflow", "Node 4: bad", details=details))
    with pytest.raises(InvalidWorkflow) as caught:
        await backend.submit({"4": {"class_type": "KSampler", "inputs": {}}})
    assert (
        caught.value.node_errors[0]["node_id"] == "4"
        and caught.value.node_errors[0]["field"] == "seed"
    )
    assert caught.value.request_id == "req_unit1"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "code", "kind", "words"),
    [
        (402, "insufficient_credits", ComfyAPIError, "add credits"),
        (422, "deployment_stopped", InvalidRequest, "start it"),
        (404, "not_found", NotFound, "req_unit1"),
    ],
)
async def test_error_codes_say_what_to_do(status, code, kind, words) -> None:
    backend = backend_of(lambda r: error(status, code))
    with pytest.raises(kind) as caught:
        await backend.get_job("j1")
    assert words in str(caught.value) and caught.value.error_code == code
    assert KEY not in str(caught.value)


async def test_429_is_retried_after_retry_after_and_501_is_not() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            return error(429, "queue_full")
        if request.url.path.endswith("/jobs"):
            return error(501, "not_implemented")
        return httpx.Response(200, json=job("running"))

    backend = backend_of(handler)
    assert (await backend.get_job("j1")).status == "running"
    assert len(calls) == 2
    assert await backend.unfinished_jobs("t") is None
    assert len(calls) == 3  # 501 once, never retried


async def test_too_many_streams_is_its_own_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        response = error(429, "too_many_streams")
        response.headers["Retry-After"] = "5"
        return response

    backend = backend_of(handler)
    with pytest.raises(TooManyStreams) as caught:
        await anext(backend.job_events("j1"))
    assert caught.value.retry_after == 5


# -- streams ---------------------------------------------------------------------------------------
def sse(*frames: tuple[str, dict]) -> bytes:
    text = ": keep-alive\n\n" + "".join(f"event: {n}\ndata: {json.dumps(d)}\n\n" for n, d in frames)
    return text.encode()


async def test_a_false_expired_is_read_until_the_truth() -> None:
    reads: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            body = sse(("progress", {"value": 0.5}), ("status", {"status": "expired"}))
            return httpx.Response(200, content=body, headers={"Content-Type": "text/event-stream"})
        reads.append(1)
        return httpx.Response(200, json=job("expired" if len(reads) < 2 else "succeeded"))

    backend = backend_of(handler)
    events = [e async for e in backend.job_events("j1")]
    assert [e.event for e in events] == ["job.progress", "job.completed"]
    assert len(reads) == 2


async def test_a_stream_that_ends_without_a_terminal_frame_just_ends() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(("status", {"status": "running"})))

    assert [e async for e in backend_of(handler).job_events("j1")] == []


async def test_a_server_without_sse_ends_the_stream_at_once() -> None:
    backend = backend_of(lambda r: error(501, "not_implemented"))
    assert [e async for e in backend.job_events("j1")] == []


async def test_events_is_not_an_account_wide_stream() -> None:
    with pytest.raises(NotImplementedError, match="no event stream"):
        await anext(backend_of(lambda r: httpx.Response(200)).events())


async def test_cancel_acknowledged_is_still_running() -> None:
    backend = backend_of(lambda r: httpx.Response(200, json=job("canceling")))
    assert (await backend.cancel("j1")).status == "running"


# -- idempotency -----------------------------------------------------------------------------------
async def test_a_reused_key_finds_the_job_by_its_label_not_the_newest() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return error(422, "idempotency_key_reuse")
        mine = job("running", metadata={"prefect_idempotency_key": "kk"})
        other = {"id": "j0", "status": "running", "metadata": "{}"}
        return httpx.Response(200, json={"jobs": [other, mine]})

    found = await backend_of(handler).submit({"1": {}}, idempotency_key="kk")
    assert found.id == "j1"


async def test_a_reused_key_nobody_carries_says_so() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return error(422, "idempotency_key_reuse")
        return httpx.Response(200, json={"jobs": [{"id": "j0", "status": "running"}]})

    with pytest.raises(InvalidRequest, match="no job carries it"):
        await backend_of(handler).submit({"1": {}}, idempotency_key="nobody")


async def test_string_only_metadata_is_sent_as_json_text() -> None:
    bodies: list = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content)["metadata"])
        if isinstance(bodies[-1], dict):
            return error(422, "invalid_request", "'metadata' must be a string (opaque label).")
        return httpx.Response(201, json=job("queued", metadata=bodies[-1]))

    backend = V2Backend("http://127.0.0.1:8190", None, transport=httpx.MockTransport(handler))
    submitted = await backend.submit({"1": {}}, tags=["t1"], idempotency_key="text")
    assert isinstance(bodies[-1], str) and submitted.tags == ["t1"]


# -- the key ---------------------------------------------------------------------------------------
async def test_the_key_goes_to_the_api_and_never_to_storage(tmp_path: Path) -> None:
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.url.host + request.url.path] = request.headers.get("Authorization")
        if request.url.host == "127.0.0.1":
            return httpx.Response(302, headers={"Location": "https://storage.invalid/o?sig=x"})
        return httpx.Response(200, content=b"\x89PNG")

    backend = backend_of(handler)
    output = mapping.output_of({"id": "o1", "name": "a.png"})
    path = await backend.download(output, tmp_path)
    assert path.read_bytes() == b"\x89PNG"
    assert seen["127.0.0.1/api/v2/assets/o1/content"] == f"Bearer {KEY}"
    assert seen["storage.invalid/o"] is None


def test_cloud_needs_a_key_and_cannot_list() -> None:
    with pytest.raises(ComfyConfigError, match="COMFY_V2_API_KEY"):
        V2Backend("https://cloud.comfy.org")
    cloud = V2Backend("https://cloud.comfy.org", KEY)
    assert not cloud.capabilities.find_jobs_by_tag and cloud.capabilities.per_job_streams
    assert KEY not in repr(cloud) + cloud.connection_key


def test_the_block_falls_back_to_the_v2_environment(monkeypatch) -> None:
    monkeypatch.setenv("COMFY_V2_BASE_URL", "https://demo.run.comfy.app/")
    monkeypatch.setenv("COMFY_API_KEY", "from-comfy-api-key")
    assert ComfyV2Credentials().resolved() == ("https://demo.run.comfy.app/", "from-comfy-api-key")
    monkeypatch.setenv("COMFY_V2_API_KEY", "from-v2")
    assert ComfyV2Credentials(api_key="**********").resolved()[1] == "from-v2"
    assert ComfyV2Credentials().get_backend().address == "https://demo.run.comfy.app"


def test_registered_and_told_apart_from_the_other_kinds() -> None:
    assert ComfyV2Credentials in block_types()
    assert _kind_of_fields({"endpoint": ORIGIN}) is ComfyV2Credentials
    assert _kind_of_fields({"base_url": ORIGIN}).__name__ == "ComfyCloudCredentials"
    assert _kind_of_fields({"url": ORIGIN}).__name__ == "ComfyUIServer"


# -- paging that never ends (issue 20, #3) ---------------------------------------------------------
def endless_list(cursors):
    """A job list that answers every page with no matching job and the next of ``cursors``."""
    gets = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return error(422, "idempotency_key_reuse")
        gets.append(request.url.params.get("cursor"))
        return httpx.Response(200, json={"jobs": [], "next_cursor": next(cursors)})

    return handler, gets


def same_cursor():
    while True:
        yield "stuck"


def fresh_cursors():
    n = 0
    while True:
        n += 1
        yield f"c{n}"


async def test_a_repeated_cursor_ends_a_submits_lookup_with_a_protocol_error():
    handler, gets = endless_list(same_cursor())
    backend = backend_of(handler)
    with pytest.raises(ComfyProtocolError, match="repeats the cursor"):
        await backend.submit({"1": {}}, idempotency_key="key-1")
    assert len(gets) <= 3


async def test_a_repeated_cursor_ends_unfinished_jobs_with_a_protocol_error():
    handler, gets = endless_list(same_cursor())
    with pytest.raises(ComfyProtocolError, match="repeats the cursor"):
        await backend_of(handler).unfinished_jobs("flow-run-1")
    assert len(gets) <= 3


async def test_fresh_cursors_for_ever_end_at_the_page_limit(caplog):
    handler, gets = endless_list(fresh_cursors())
    assert await backend_of(handler).unfinished_jobs("flow-run-1") == []
    assert len(gets) == follow.MAX_PAGES
    assert "after 100 pages" in caplog.text


# -- a stream that never ends, or never ends a line (issue 20, #4 and #5) --------------------------
def streaming(frames, *, job_status: str = "succeeded", sent: list | None = None):
    """A server whose job stream is ``frames()`` (an async generator of bytes) and whose job
    reads say ``job_status``."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(
                200, content=frames(), headers={"Content-Type": "text/event-stream"}
            )
        return httpx.Response(200, json=job(job_status))

    return handler


@pytest.mark.parametrize("kind", ["keep-alives", "progress", "silence"])
async def test_a_stream_that_never_says_the_end_is_checked_over_rest(monkeypatch, kind) -> None:
    import asyncio

    from prefect_comfy.backends.v2 import stream

    monkeypatch.setattr(stream, "TRUST_SECONDS", 0.3)

    async def frames():
        while True:
            if kind == "silence":
                await asyncio.sleep(3600)
            await asyncio.sleep(0.02)
            if kind == "progress":
                yield b'event: progress\ndata: {"value": 0.5}\n\n'
            else:
                yield b": keep-alive\n\n"

    events = backend_of(streaming(frames)).job_events("j1")
    seen = await asyncio.wait_for(_until_terminal(events), scaled(5))
    assert seen[-1].event == "job.completed"


async def _until_terminal(events):
    seen = []
    async for event in events:
        seen.append(event)
        if event.event != "job.progress":
            break
    await events.aclose()
    return seen


async def test_a_stream_line_without_an_end_is_capped() -> None:
    import asyncio

    sent = []

    async def frames():
        yield b"data: "
        while True:
            sent.append(1)
            yield b"x" * 65536
            await asyncio.sleep(0)

    events = backend_of(streaming(frames)).job_events("j1")
    with pytest.raises(ComfyProtocolError, match="longer than"):
        await asyncio.wait_for(anext(events), scaled(10))
    assert len(sent) * 65536 < 4 * 2**20  # read no further than the cap


# -- malformed answers (issue 20, #13) -------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        [],
        "job",
        7,
        {"id": None, "status": "succeeded"},
        {"id": 5, "status": "succeeded"},
        {"status": "succeeded"},
        {"id": "j1", "status": "succeeded", "outputs": 5},
        {"id": "j1", "status": "succeeded", "outputs": [{"id": "a", "size_bytes": "big"}]},
        {"id": "j1", "status": "running", "created_at": "yesterday-ish"},
        {"id": "j1", "status": "failed", "error": {"message": "x", "code": ["no"]}},
    ],
)
async def test_a_malformed_job_is_a_protocol_error_at_once(body) -> None:
    backend = backend_of(lambda r: httpx.Response(200, json=body))
    with pytest.raises(ComfyProtocolError, match="Comfy API v2"):
        await backend.get_job("j1")


@pytest.mark.parametrize(
    "body",
    [
        [1],
        {"jobs": {"a": 1}},
        {"jobs": [1]},
        {"jobs": [{"id": None}]},
        {"jobs": [], "next_cursor": 5},
    ],
)
async def test_a_malformed_job_list_is_a_protocol_error_at_once(body) -> None:
    backend = backend_of(lambda r: httpx.Response(200, json=body))
    with pytest.raises(ComfyProtocolError, match="Comfy API v2"):
        await backend.list_jobs_page()


@pytest.mark.parametrize("body", [[], "x", {"id": "a1", "size_bytes": "big"}])
async def test_a_malformed_asset_is_a_protocol_error_at_once(body) -> None:
    backend = backend_of(lambda r: httpx.Response(200, json=body))
    with pytest.raises(ComfyProtocolError, match="Comfy API v2"):
        await backend.get_input("a1")


async def test_list_unfinished_pages_by_status_and_stops_at_its_budget():
    asked: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        asked.append(params)
        page = int(params.get("cursor") or 0)
        jobs = [{"id": f"j{page}_{i}", "status": "queued"} for i in range(100)]
        return httpx.Response(200, json={"jobs": jobs, "next_cursor": str(page + 1)})

    async with backend_of(handler) as backend:
        found = await backend.list_unfinished(max_requests=3)
    assert found is not None
    assert (len(found.jobs), found.requests, found.complete) == (300, 3, False)
    assert {p["status"] for p in asked} == {"queued,running,canceling"}


async def test_list_unfinished_knows_a_full_page_without_a_cursor_is_not_everything():
    def handler(request: httpx.Request) -> httpx.Response:  # comfy-api-proxy 0.1.6: no cursor
        jobs = [{"id": f"j{i}", "status": "running"} for i in range(100)]
        return httpx.Response(200, json={"jobs": jobs, "truncated": False})

    async with backend_of(handler) as backend:
        found = await backend.list_unfinished(max_requests=50)
    assert found is not None and (found.requests, found.complete) == (1, False)


async def test_a_server_that_refuses_the_status_filter_is_read_job_by_job():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url)
        return error(422, "invalid_request", "unknown query parameter 'status'")

    origin = "http://127.0.0.1:8191"
    backend = V2Backend(origin, KEY, transport=httpx.MockTransport(handler))
    async with backend:
        assert await backend.list_unfinished(max_requests=5) is None
        assert await backend.list_unfinished(max_requests=5) is None  # remembered: not asked
    assert len(calls) == 1
