"""Fuzzing (hypothesis): whatever a server answers, the client raises only the package's own errors.

REST answers (random statuses, headers and bodies, through ``httpx.MockTransport``) go through every
reading call of the three backends; frames of any shape go through the Cloud stream's parser, and
event streams of any shape through a v2 job's stream. Each call runs under a deadline, so a hang
fails the test too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_comfy.backends.cloud import protocol
from prefect_comfy.backends.cloud.rest import ComfyClient
from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
from prefect_comfy.backends.v2.backend import V2Backend
from prefect_comfy.exceptions import ComfyError
from prefect_comfy.models import ComfyEvent
from prefect_comfy.settings import ComfySettings
from prefect_comfy.transport.retry import RetryPolicy
from tests.support.rest_fakes import KEY

ORIGIN = "https://comfy.invalid"
DEADLINE = 5.0
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "id", "status", "jobs", "outputs", "items", "total", "has_more", "error", "types",
        "queue_running", "queue_pending", "prompt_id", "download_url", "name", "tags",
        "node_errors", "code", "message", "details", "type", "data", "event", "payload",
        "next_cursor", "metadata", "size_bytes", "file_path", "value", "created_at",
    ]
)  # fmt: skip
SHAPED = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=8) | st.just(float("nan")),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=15,
)
"""JSON in the API's own vocabulary, so that answers get past the first checks and deeper."""

BODIES = st.one_of(
    JSON.map(lambda v: json.dumps(v).encode()),
    SHAPED.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.sampled_from([b"", b"[" * 5000 + b"]" * 5000, b"\xff\xfe", b"null", b'{"error": null}']),
)
STATUSES = st.one_of(
    st.sampled_from([200, 201, 202, 204, 301, 302, 307, 400, 401, 403, 404, 409, 422, 429, 500]),
    st.integers(100, 599),
)
HEADERS = st.dictionaries(
    st.sampled_from(["Retry-After", "Location", "Content-Type", "Content-Encoding"]),
    st.sampled_from(["1", "soon", "https://elsewhere.invalid/x", "gzip", "application/json", ""]),
    max_size=2,
)


def answering(status: int, headers: dict[str, str], body: bytes) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        # A stream, not content: the client decodes it (gzip …) as it would off the network.
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))

    return httpx.MockTransport(handler)


async def only_own_errors(call: Any) -> None:
    with contextlib.suppress(ComfyError):  # anything else fails the test, and so does a hang
        await asyncio.wait_for(call, DEADLINE)


async def no_wait(_: float) -> None:
    return None


CLOUD_CALLS = [
    lambda c: c.get_job("j"),
    lambda c: c.list_jobs(),
    lambda c: c.job_outputs("j"),
    lambda c: c.create_job({"1": {"class_type": "X", "inputs": {}}}),
    lambda c: c.cancel_job("j"),
    lambda c: c.get_account(),
    lambda c: c.model_types(),
    lambda c: c.list_inputs(),
    lambda c: c.get_output("o"),
    lambda c: c.validate_workflow({"1": {"class_type": "X", "inputs": {}}}),
]
COMFYUI_CALLS = [
    lambda b: b.get_job("p"),
    lambda b: b.http.queue_records(),
    lambda b: b.http.recent_history(5),
    lambda b: b.http.model_files("checkpoints"),
    lambda b: b.get_model("checkpoints/x.safetensors"),
    lambda b: b.submit({"1": {"class_type": "X", "inputs": {}}}),
    lambda b: b.upload_input(b"x", name="a.png"),
    lambda b: b.get_input("a.png"),
]


@FUZZ
@given(status=STATUSES, headers=HEADERS, body=BODIES, which=st.integers(0, len(CLOUD_CALLS) - 1))
def test_cloud_rest_answers_end_in_the_package_errors(
    status: int, headers: dict[str, str], body: bytes, which: int
) -> None:
    async def run() -> None:
        async with ComfyClient(
            KEY,
            ORIGIN,
            transport=answering(status, headers, body),
            retry=RetryPolicy(max_retries=1, sleep=no_wait),
        ) as client:
            await only_own_errors(CLOUD_CALLS[which](client))

    asyncio.run(run())


@FUZZ
@given(status=STATUSES, headers=HEADERS, body=BODIES, which=st.integers(0, len(COMFYUI_CALLS) - 1))
def test_comfyui_rest_answers_end_in_the_package_errors(
    status: int, headers: dict[str, str], body: bytes, which: int
) -> None:
    async def run() -> None:
        fast = ComfySettings(max_retries=1, retry_max_delay=0.01)
        async with ComfyUIBackend(
            ORIGIN, KEY, transport=answering(status, headers, body), settings=fast
        ) as backend:
            backend.http.retry = RetryPolicy(max_retries=1, sleep=no_wait)
            await only_own_errors(COMFYUI_CALLS[which](backend))

    asyncio.run(run())


FRAMES = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=80),
    JSON.map(json.dumps),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["event", "connected", "subscribed", "pong", "error", 7, None])},
        optional={"data": SHAPED, "id": SHAPED, "timestamp": SHAPED},
    ).map(json.dumps),
    st.fixed_dictionaries(
        {
            "type": st.just("event"),
            "data": st.fixed_dictionaries(
                {"event": st.sampled_from(["job.completed", "job.progress", 5]), "payload": SHAPED}
            ),
        },
        optional={"id": SHAPED, "timestamp": SHAPED},
    ).map(json.dumps),
    st.just("[" * 100_000 + "]" * 100_000),
)


@settings(max_examples=400, deadline=None)
@given(frame=FRAMES)
def test_cloud_frames_decode_or_fail_with_a_protocol_error(frame: str | bytes) -> None:
    try:
        decoded = protocol.decode(frame)
        if decoded.type == "event":
            assert isinstance(decoded.event(), ComfyEvent)
    except ComfyError:
        pass


V2_CALLS = [
    lambda b: b.get_job("j"),
    lambda b: b.list_jobs_page(),
    lambda b: b.unfinished_jobs("t"),
    lambda b: b.submit({"1": {"class_type": "X", "inputs": {}}}),
    lambda b: b.cancel("j"),
    lambda b: b.outputs("j"),
    lambda b: b.get_input("a"),
    lambda b: b.get_model("m"),
]


def v2_backend(transport: httpx.MockTransport) -> V2Backend:
    backend = V2Backend(ORIGIN, KEY, transport=transport)
    backend.http.retry = RetryPolicy(max_retries=1, sleep=no_wait)
    return backend


@FUZZ
@given(status=STATUSES, headers=HEADERS, body=BODIES, which=st.integers(0, len(V2_CALLS) - 1))
def test_v2_rest_answers_end_in_the_package_errors(
    status: int, headers: dict[str, str], body: bytes, which: int
) -> None:
    async def run() -> None:
        async with v2_backend(answering(status, headers, body)) as backend:
            await only_own_errors(V2_CALLS[which](backend))

    asyncio.run(run())


SSE_LINES = st.one_of(
    st.sampled_from(["", ": keep-alive", "event: status", "event: progress", "event: output"]),
    SHAPED.map(lambda v: f"data: {json.dumps(v)}"),
    st.fixed_dictionaries({"status": st.sampled_from(["running", "succeeded", "failed", 3])}).map(
        lambda v: f"data: {json.dumps(v)}"
    ),
    st.text(max_size=30),
)


@FUZZ
@given(lines=st.lists(SSE_LINES, max_size=12), job=BODIES)
def test_v2_event_streams_end_in_events_or_the_package_errors(lines: list[str], job: bytes) -> None:
    """A job's stream of any shape, the job read of any shape: events or own errors, no hang."""
    body = ("\n".join(lines) + "\n").encode("utf-8", "replace")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, stream=httpx.ByteStream(body))
        return httpx.Response(200, stream=httpx.ByteStream(job))

    async def run() -> None:
        async with v2_backend(httpx.MockTransport(handler)) as backend:

            async def drain() -> None:
                async for event in backend.job_events("j"):
                    assert isinstance(event, ComfyEvent)

            await only_own_errors(drain())

    asyncio.run(run())
