"""The emulator's Comfy API v2 face over real sockets, with httpx (the wire, pinned; the official
client's view is in ``test_emulator_v2_sdk.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import blake3
import httpx
import pytest

from prefect_comfy_emulator import EmulatorConfig, EmulatorServer
from prefect_comfy_emulator.images import make_png, png_size
from tests.support.keys import API_KEY, OTHER_KEY, WRONG_KEY
from tests.support.waiting import eventually, scaled

AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUICK = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "v2"}},
}  # fmt: skip
JOB_FIELDS = {
    "id", "status", "created_at", "started_at", "completed_at", "expires_at", "queue_position",
    "progress", "outputs", "error", "urls", "metrics", "metadata",
}  # fmt: skip
OUTPUT_FIELDS = {
    "node_id", "name", "type", "content_type", "size_bytes", "id", "hash", "url", "url_expires_at",
    "job_id",
}  # fmt: skip


def sleeper(seconds: float) -> dict[str, Any]:
    return {"1": {"class_type": "EmulatorSleep", "inputs": {"seconds": seconds}}}


@contextlib.contextmanager
def own_server(**overrides: Any) -> Iterator[EmulatorServer]:
    config = {
        "api_keys": [API_KEY, OTHER_KEY],
        "seed": 3,
        "step_duration": 0.01,
        "upload_duration": 0.0,
    }
    with EmulatorServer(EmulatorConfig(**{**config, **overrides})) as server:
        yield server


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    with own_server(v2_max_streams=3, v2_keepalive_seconds=0.2) as emu:
        yield emu


@pytest.fixture
async def http(server: EmulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url + "/api/v2", headers=AUTH, timeout=10) as c:
        yield c
    server.reset_faults()


def error_of(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text[:400]
    error = answer.json()["error"]
    assert error["code"] == code and error["message"], error
    assert answer.headers["X-Comfy-Request-Id"].startswith("req_")
    assert not isinstance(error.get("details", {}), list), "v2 details are an object"
    return error


async def sse(http: httpx.AsyncClient, job_id: str, timeout: float = 10) -> list[tuple[str, Any]]:
    """Every frame of a job's stream until the server ends it: (event, data) or ("comment", text)."""
    frames: list[tuple[str, Any]] = []
    async with asyncio.timeout(timeout), http.stream("GET", f"/jobs/{job_id}/events") as answer:
        assert answer.status_code == 200, (await answer.aread())[:300]
        assert answer.headers["content-type"].startswith("text/event-stream")
        event = None
        async for line in answer.aiter_lines():
            if line.startswith(":"):
                frames.append(("comment", line))
            elif line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                frames.append((event, json.loads(line[len("data: ") :])))
    return frames


async def submit(http: httpx.AsyncClient, workflow: dict[str, Any], **body: Any) -> dict[str, Any]:
    answer = await http.post("/jobs", json={"workflow": workflow, **body})
    assert answer.status_code == 201, answer.text[:400]
    return answer.json()


async def until_terminal(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        job = (await http.get(f"/jobs/{job_id}")).json()
        return job if job["status"] in ("succeeded", "failed", "canceled", "expired") else None

    return await eventually(probe, message=f"job {job_id} terminal")


# ---- jobs ----------------------------------------------------------------------------------------
async def test_submit_read_and_download_through_signed_storage(server, http) -> None:
    job = await submit(http, QUICK, metadata={"flow_run": "fr-1"})
    assert set(job) == JOB_FIELDS and job["status"] == "queued"
    assert job["urls"] == {
        "self": f"/api/v2/jobs/{job['id']}",
        "events": f"/api/v2/jobs/{job['id']}/events",
        "cancel": f"/api/v2/jobs/{job['id']}/cancel",
    }
    done = await until_terminal(http, job["id"])
    assert done["status"] == "succeeded" and done["metadata"] == {"flow_run": "fr-1"}
    assert done["progress"]["value"] == 1.0 and done["progress"]["nodes_done"] == 2
    assert done["metrics"]["execution_ms"] is not None
    [output] = done["outputs"]
    assert set(output) == OUTPUT_FIELDS and output["node_id"] == "2" and output["type"] == "image"
    redirect = await http.get(output["url"].removeprefix(server.url + "/api/v2"))
    assert redirect.status_code == 302
    location = redirect.headers["Location"]
    assert (
        location.startswith(server.storage_origin + "/_storage/")
        and server.storage_origin != server.url
    )
    async with httpx.AsyncClient(timeout=10) as storage:
        assert (await storage.get(location, headers=AUTH)).status_code == 400, (
            "the key must not go there"
        )
        data = (await storage.get(location)).content
    assert png_size(data) == (8, 8) and len(data) == output["size_bytes"]
    # One state engine: the v1 face sees the same job.
    v1 = await http.get(server.api_url + f"/jobs/{job['id']}")
    assert v1.status_code == 200 and v1.json()["status"] == "completed"


async def test_failed_job_names_node_and_class(http) -> None:
    fail = {"7": {"class_type": "EmulatorFail", "inputs": {"message": "out of VRAM"}}}
    job = await until_terminal(http, (await submit(http, fail))["id"])
    assert job["status"] == "failed"
    assert job["error"] == {
        "code": "node_execution_error", "message": "out of VRAM", "node_id": "7",
        "class_type": "EmulatorFail", "traceback": None,
    }  # fmt: skip


async def test_cancel_goes_canceling_then_canceled_and_is_idempotent(http) -> None:
    job = await submit(http, sleeper(30))
    await eventually(lambda: _status(http, job["id"], "running"))
    first = await http.post(f"/jobs/{job['id']}/cancel")
    assert first.status_code == 200 and first.json()["status"] == "canceling"
    assert (await until_terminal(http, job["id"]))["status"] == "canceled"
    again = await http.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "canceled"
    queued = await submit(http, QUICK)
    server_side = await http.post(f"/jobs/{queued['id']}/cancel")
    assert server_side.json()["status"] in ("canceled", "canceling", "succeeded")


async def _status(http: httpx.AsyncClient, job_id: str, status: str) -> bool:
    return (await http.get(f"/jobs/{job_id}")).json()["status"] == status


async def test_list_by_metadata_with_cursor(http) -> None:
    label = uuid.uuid4().hex
    ids = [(await submit(http, QUICK, metadata={"batch": label}))["id"] for _ in range(5)]
    await submit(http, QUICK, metadata={"batch": "other"})
    seen: list[str] = []
    cursor = None
    while True:
        params = {"metadata[batch]": label, "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await http.get("/jobs", params=params)).json()
        seen += [job["id"] for job in page["jobs"]]
        assert all(job["metadata"] == {"batch": label} for job in page["jobs"])
        cursor = page.get("next_cursor")
        if cursor is None:
            break
    assert seen == list(reversed(ids)), "newest first, each once"
    error_of(await http.get("/jobs", params={"cursor": "bm9wZQ"}), 422, "invalid_cursor")
    error_of(await http.get("/jobs", params={"metadata": "x"}), 422, "invalid_metadata_filter")
    error_of(await http.get("/jobs", params={"limit": "0"}), 422, "invalid_request")


async def test_list_by_status_as_comfy_api_proxy_does(http) -> None:
    label = uuid.uuid4().hex
    done = await submit(http, QUICK, metadata={"batch": label})
    await eventually(lambda: _status(http, done["id"], "succeeded"), message="quick job done")
    slow = await submit(http, sleeper(30), metadata={"batch": label})
    try:
        params = {"metadata[batch]": label, "status": "queued,running,canceling"}
        unfinished = (await http.get("/jobs", params=params)).json()["jobs"]
        assert [job["id"] for job in unfinished] == [slow["id"]]
        params["status"] = "succeeded"
        assert [j["id"] for j in (await http.get("/jobs", params=params)).json()["jobs"]] == [
            done["id"]
        ]
        error = error_of(await http.get("/jobs", params={"status": "done"}), 422, "invalid_request")
        assert "done" in error["message"]
    finally:
        await http.post(f"/jobs/{slow['id']}/cancel")


# ---- SSE -----------------------------------------------------------------------------------------
async def test_event_stream_frames_and_end(http) -> None:
    workflow = {
        **QUICK,
        "3": {"class_type": "EmulatorSleep", "inputs": {"seconds": 0.5, "images": ["1", 0]}},
    }
    job = await submit(http, workflow)
    frames = await sse(http, job["id"])
    events = [name for name, _ in frames if name != "comment"]
    assert events[0] == "status" and frames[0][1]["status"] in ("queued", "running")
    assert "progress" in events and events[-1] == "status"
    assert frames[-1][1] == {"status": "succeeded", "queue_position": None}
    values = [data["value"] for name, data in frames if name == "progress"]
    assert values == sorted(values) and values[-1] == 1.0 and all(0 <= v <= 1 for v in values)
    outputs = [data for name, data in frames if name == "output"]
    assert len(outputs) == 1 and set(outputs[0]) == OUTPUT_FIELDS
    assert events.index("output") > events.index("progress")
    # A stream opened after the end: the snapshot, then the end.
    assert await sse(http, job["id"]) == [
        ("status", {"status": "succeeded", "queue_position": None})
    ]


async def test_stream_of_a_cancelled_job_shows_canceling(server, http) -> None:
    job = await submit(http, sleeper(30))
    await eventually(lambda: _status(http, job["id"], "running"))
    reader = asyncio.create_task(sse(http, job["id"]))
    await eventually(lambda: server.v2_stats()["streams_open"] == 1)  # the stream is open
    await eventually(lambda: _progress_seen(http, job["id"]))
    await http.post(f"/jobs/{job['id']}/cancel")
    statuses = [data["status"] for name, data in await reader if name == "status"]
    assert statuses[-2:] == ["canceling", "canceled"]


async def _progress_seen(http: httpx.AsyncClient, job_id: str) -> bool:
    return (await http.get(f"/jobs/{job_id}")).json()["progress"] is not None


async def test_stream_cap_answers_429_with_retry_after(server, http) -> None:
    jobs = [await submit(http, sleeper(30)) for _ in range(4)]
    readers = [asyncio.create_task(sse(http, j["id"], timeout=30)) for j in jobs[:3]]
    await eventually(lambda: server.v2_stats()["streams_open"] == 3)
    error = error_of(await http.get(f"/jobs/{jobs[3]['id']}/events"), 429, "too_many_streams")
    assert "retry" in error["message"]
    refused = await http.get(f"/jobs/{jobs[3]['id']}/events")
    assert refused.headers["Retry-After"] == "5"
    await http.post(f"/jobs/{jobs[0]['id']}/cancel")
    await readers[0]
    await eventually(lambda: server.v2_stats()["streams_open"] == 2)
    readers.append(asyncio.create_task(sse(http, jobs[3]["id"], timeout=30)))
    await eventually(lambda: server.v2_stats()["streams_open"] == 3)
    for job in jobs[1:]:
        await http.post(f"/jobs/{job['id']}/cancel")
    for reader in readers[1:]:
        assert (await reader)[-1][1]["status"] == "canceled"
    await eventually(lambda: server.v2_stats()["streams_open"] == 0)
    assert server.v2_stats()["streams_peak"] <= 3


async def test_drop_connections_ends_streams_and_pause_holds_frames(server, http) -> None:
    job = await submit(http, sleeper(30))
    reader = asyncio.create_task(sse(http, job["id"]))
    await eventually(lambda: server.v2_stats()["streams_open"] == 1)
    server.drop_connections()
    frames = await reader
    assert all(data["status"] != "canceled" for name, data in frames if name == "status")
    await http.post(f"/jobs/{job['id']}/cancel")
    held = await submit(http, sleeper(30))
    async with (
        asyncio.timeout(scaled(15)),
        http.stream("GET", f"/jobs/{held['id']}/events") as answer,
    ):
        lines = answer.aiter_lines()
        assert await anext(lines) == "event: status"
        server.pause_events()
        await http.post(f"/jobs/{held['id']}/cancel")
        await until_terminal(http, held["id"])
        # While paused the stream holds the terminal frame and sends keep-alive comments.
        while (line := await anext(lines)) != ": keep-alive":
            assert "canceled" not in line, line
        server.resume_events()
        rest = [line async for line in lines if line]
    assert rest[-2:] == ["event: status", 'data: {"status": "canceled", "queue_position": null}']


# ---- idempotency ---------------------------------------------------------------------------------
async def test_idempotency_keys_are_single_use(server, http) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = await http.post("/jobs", json={"workflow": QUICK}, headers=key)
    assert first.status_code == 201
    before = len(server.state.jobs)
    error_of(
        await http.post("/jobs", json={"workflow": QUICK}, headers=key),
        422,
        "idempotency_key_reuse",
    )
    assert len(server.state.jobs) == before
    # Released after a definite failure, so that a corrected retry may use it.
    fresh = {"Idempotency-Key": str(uuid.uuid4())}
    error_of(
        await http.post("/jobs", json={"workflow": {"1": {}}}, headers=fresh),
        422,
        "invalid_workflow",
    )
    server.inject_v2_error("insufficient_credits")
    error_of(
        await http.post("/jobs", json={"workflow": QUICK}, headers=fresh),
        402,
        "insufficient_credits",
    )
    assert (await http.post("/jobs", json={"workflow": QUICK}, headers=fresh)).status_code == 201
    # Kept after an unknown outcome: the job exists, the answer was lost.
    lost = {"Idempotency-Key": str(uuid.uuid4())}
    server.inject_faults(500, path="/jobs", when="after")
    error_of(
        await http.post("/jobs", json={"workflow": QUICK}, headers=lost), 500, "upstream_error"
    )
    error_of(
        await http.post("/jobs", json={"workflow": QUICK}, headers=lost),
        422,
        "idempotency_key_reuse",
    )


async def test_concurrent_duplicates_create_one_job(server, http) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    before = len(server.state.jobs)
    answers = await asyncio.gather(
        *(http.post("/jobs", json={"workflow": QUICK}, headers=key) for _ in range(5))
    )
    assert sorted(a.status_code for a in answers) == [201, 422, 422, 422, 422]
    assert len(server.state.jobs) == before + 1


# ---- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"workflow": {"nodes": [], "links": [], "last_node_id": 1}}, 422, "workflow_format_ui"),
        ({"workflow": {"1": {"class_type": "Nope", "inputs": {}}}}, 422, "invalid_workflow"),
        ({"workflow": QUICK, "webhook_url": "http://x.invalid"}, 422, "invalid_request"),
        (
            {"workflow": QUICK, "metadata": {str(i): "v" for i in range(17)}},
            422,
            "metadata_invalid",
        ),
        ({"workflow": QUICK, "extra_data": {}}, 422, "invalid_request"),
        ({"workflow": [1]}, 422, "invalid_request"),
    ],
    ids=["ui", "invalid", "reserved", "metadata", "extra-data", "not-object"],
)
async def test_submission_errors(http, body, status, code) -> None:
    error = error_of(await http.post("/jobs", json=body), status, code)
    if code == "invalid_workflow":
        assert "Nope" in error["message"] and "1" in error["details"]["node_errors"]


async def test_auth_not_found_faults_and_injected_codes(server, http) -> None:
    async with httpx.AsyncClient(base_url=server.url + "/api/v2", timeout=10) as anonymous:
        error_of(await anonymous.get("/jobs/x"), 401, "unauthorized")
        wrong = await anonymous.get("/jobs/x", headers={"Authorization": f"Bearer {WRONG_KEY}"})
        assert WRONG_KEY not in wrong.text
        assert (await anonymous.get("/health")).json() == {"status": "ok"}
    error_of(await http.get("/jobs/job_missing"), 404, "not_found")
    error_of(await http.get("/nowhere"), 404, "not_found")
    error_of(await http.post("/jobs", content=b"[" * 10_000), 400, "invalid_request")
    mine = await submit(http, QUICK)
    async with httpx.AsyncClient(base_url=server.url + "/api/v2", timeout=10) as other:
        theirs = await other.get(
            f"/jobs/{mine['id']}", headers={"Authorization": f"Bearer {OTHER_KEY}"}
        )
        error_of(theirs, 404, "not_found")
    server.inject_faults(429, retry_after=2, path="/jobs")
    limited = await http.get("/jobs")
    error_of(limited, 429, "rate_limited")
    assert limited.headers["Retry-After"] == "2"
    for code, status in [
        ("queue_full", 429),
        ("deployment_not_ready", 429),
        ("deployment_stopped", 422),
    ]:
        server.inject_v2_error(code, retry_after=1 if status == 429 else None)
        answer = await http.post("/jobs", json={"workflow": QUICK})
        error_of(answer, status, code)
        assert ("Retry-After" in answer.headers) == (status == 429)


# ---- assets --------------------------------------------------------------------------------------
def multipart(data: bytes, file_path: str, **fields: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    form = {"content_type": "image/png", "file_path": file_path, **fields}
    return {"files": {"file": (file_path, data, "image/png")}, "data": form}, {}


async def test_assets_hash_dedup_content_and_load_image(server, http) -> None:
    png = make_png(20, 10, uuid.uuid4().bytes)
    digest = "blake3:" + blake3.blake3(png).hexdigest()
    assert (await http.head(f"/assets/by-hash/{digest}")).status_code == 404
    error_of(await http.post("/assets/from-hash", json={"hash": digest}), 404, "blob_not_found")
    wrong = "blake3:" + "0" * 64
    kwargs, _ = multipart(png, "photo.png", expected_hash=wrong)
    error_of(await http.post("/assets", **kwargs), 409, "hash_mismatch")
    kwargs, _ = multipart(png, "photo.png", expected_hash=digest, tags=["input"])
    created = await http.post("/assets", **kwargs)
    assert created.status_code == 201, created.text
    asset = created.json()
    assert (
        asset["hash"] == digest and asset["size_bytes"] == len(png) and asset["created_new"] is True
    )
    assert (await http.head(f"/assets/by-hash/{digest}")).status_code == 200
    kwargs, _ = multipart(png, "again.png")
    dedup = await http.post("/assets", **kwargs)
    assert dedup.status_code == 200 and dedup.json()["created_new"] is False
    minted = await http.post("/assets/from-hash", json={"hash": digest, "file_path": "third.png"})
    assert minted.status_code == 201 and minted.json()["id"] not in (
        asset["id"],
        dedup.json()["id"],
    )
    same = await http.post("/assets/from-hash", json={"hash": digest, "file_path": "third.png"})
    assert same.status_code == 200 and same.json()["id"] == minted.json()["id"]
    # Another account cannot find the blob by hash.
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    assert (await http.head(f"/assets/by-hash/{digest}", headers=other)).status_code == 404
    # Content: a 302 to signed storage on the storage origin.
    redirect = await http.get(f"/assets/{asset['id']}/content")
    assert redirect.status_code == 302
    async with httpx.AsyncClient(timeout=10) as storage:
        assert (await storage.get(redirect.headers["Location"])).content == png
    # A workflow refers to it as core/ASSET.
    ref = {
        "__type": "core/ASSET",
        "info": {"id": asset["id"], "hash": digest, "file_path": "photo.png"},
    }
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": ref}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "in"}},
    }
    job = await submit(http, workflow)
    slow = {**workflow, "3": {"class_type": "EmulatorSleep", "inputs": {"seconds": 30}}}
    user = await submit(http, slow)
    error_of(await http.delete(f"/assets/{asset['id']}"), 409, "asset_in_use")
    await http.post(f"/jobs/{user['id']}/cancel")
    assert (await until_terminal(http, user["id"]))["status"] == "canceled"
    done = await until_terminal(http, job["id"])
    assert done["status"] == "succeeded"
    out = await http.get(
        done["outputs"][0]["url"].removeprefix(server.url + "/api/v2"), follow_redirects=False
    )
    async with httpx.AsyncClient(timeout=10) as storage:
        assert png_size((await storage.get(out.headers["Location"])).content) == (20, 10)
    assert (await http.delete(f"/assets/{asset['id']}")).status_code == 204
    error_of(await http.delete(f"/assets/{asset['id']}"), 404, "not_found")
    missing = dict(workflow)
    missing["1"] = {
        "class_type": "LoadImage",
        "inputs": {"image": {**ref, "info": {"id": str(uuid.uuid4())}}},
    }
    error_of(await http.post("/jobs", json={"workflow": missing}), 422, "missing_asset")


async def test_surfaces_without_sse_or_listing_answer_501() -> None:
    with own_server(v2_sse=False, v2_list_jobs=False) as emu:
        async with httpx.AsyncClient(
            base_url=emu.url + "/api/v2", headers=AUTH, timeout=10
        ) as http:
            job = await submit(http, QUICK)
            error_of(await http.get(f"/jobs/{job['id']}/events"), 501, "not_implemented")
            error_of(await http.get("/jobs"), 501, "not_implemented")


async def test_frames_arrive_while_the_job_runs(http) -> None:
    """The stream is not held back until it ends (it once was, by the middleware)."""
    job = await submit(http, sleeper(30))
    async with (
        asyncio.timeout(scaled(5)),
        http.stream("GET", f"/jobs/{job['id']}/events") as answer,
    ):
        lines = answer.aiter_lines()
        while await anext(lines) != "event: progress":
            pass
        assert (await http.get(f"/jobs/{job['id']}")).json()["status"] == "running"
    await http.post(f"/jobs/{job['id']}/cancel")
