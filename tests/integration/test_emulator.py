"""The emulator over real sockets: REST, WebSocket, storage, controls and the CLI.

Uses httpx and websockets directly (not the project's client), so that these tests pin the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from prefect_comfy_emulator import EmulatorConfig, EmulatorServer
from prefect_comfy_emulator.images import png_size
from tests.support.keys import API_KEY, OTHER_KEY, WRONG_KEY
from tests.support.waiting import eventually, eventually_sync, scaled

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def image_workflow(
    width: int = 96, height: int = 64, prefix: str = "ComfyUI", steps: int = 3
) -> dict[str, Any]:
    """ComfyUI's default SD1.5 text-to-image graph (API format) with a small latent."""
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 42, "steps": steps, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }  # fmt: skip


QUICK = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "quick"}},
}
SLOW = {"1": {"class_type": "EmulatorSleep", "inputs": {"seconds": 30}}}
FAIL = {
    "1": {
        "class_type": "EmulatorFail",
        "inputs": {"message": "out of VRAM", "code": "oom", "after_steps": 2},
    }
}


@pytest.fixture
async def http(emulator: EmulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.api_url, headers=AUTH, timeout=10) as client:
        yield client


@pytest.fixture
async def storage() -> AsyncIterator[httpx.AsyncClient]:
    """A client without any key, as a client must use for download and upload URLs."""
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@contextlib.asynccontextmanager
async def event_stream(
    server: EmulatorServer, patterns: list[str], key: str = API_KEY, query: bool = False
) -> AsyncIterator[Any]:
    url, headers = server.ws_url, {"Authorization": f"Bearer {key}"}
    if query:
        url, headers = f"{url}?api_key={key}", {}
    async with websockets.connect(url, additional_headers=headers, open_timeout=5) as ws:
        connected = json.loads(await asyncio.wait_for(ws.recv(), scaled(5)))
        assert connected["type"] == "connected" and connected["data"]["session_id"].startswith(
            "ses_"
        )
        if patterns:
            await ws.send(json.dumps({"type": "subscribe", "data": {"events": patterns}}))
            assert await recv(ws) == {"type": "subscribed", "data": {"events": patterns}}
        yield ws


async def recv(ws: Any, timeout: float = 5) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until(
    ws: Any, event: str, resource_id: str | None = None, timeout: float = 5
) -> list[dict[str, Any]]:
    """Every event frame up to and including the first ``event`` (for ``resource_id``)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv(ws, timeout)
            if frame["type"] != "event":
                continue
            seen.append(frame)
            data = frame["data"]
            if data["event"] == event and (
                resource_id is None or data["payload"]["id"] == resource_id
            ):
                return seen


@contextlib.contextmanager
def own_server(**overrides: Any) -> Any:
    config = {
        "api_keys": [API_KEY, OTHER_KEY],
        "seed": 99,
        "step_duration": 0.01,
        "upload_duration": 0.02,
    }
    with EmulatorServer(EmulatorConfig(**{**config, **overrides})) as server:
        yield server


# ---- jobs --------------------------------------------------------------------------------------
async def test_submit_progress_complete_and_download(emulator, http, storage) -> None:
    async with event_stream(emulator, ["job.*"]) as ws:
        created = await http.post("/jobs", json={"workflow": image_workflow(), "tags": ["demo"]})
        assert created.status_code == 202
        job = created.json()
        assert (
            job["status"] == "pending" and job["id"].startswith("job_") and job["tags"] == ["demo"]
        )
        frames = await until(ws, "job.completed", job["id"])
    progress = [f["data"]["payload"] for f in frames if f["data"]["event"] == "job.progress"]
    assert len(progress) == 6 + 3  # one per plain node, one per KSampler step
    values = [p["progress"] for p in progress]
    assert values == sorted(values) and values[-1] == 100
    assert {p["node_class"] for p in progress} >= {"KSampler", "SaveImage"}
    assert all(p["status"] == "running" and p["id"] == job["id"] for p in progress)
    assert len({f["id"] for f in frames}) == len(frames)
    done = frames[-1]["data"]["payload"]
    assert done["status"] == "completed" and done["completed_at"] and done["started_at"]
    (output,) = done["outputs"]
    assert (
        output["type"] == "image"
        and output["mime_type"] == "image/png"
        and output["job_id"] == job["id"]
    )
    assert output["name"].endswith(".png") and output["id"].startswith("out_")

    image = await storage.get(output["download_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert png_size(image.content) == (96, 64) and len(image.content) == output["size"]
    leaked = await storage.get(output["download_url"], headers=AUTH)
    assert leaked.status_code == 400 and leaked.json()["error"]["code"] == "invalid_request"
    forged = await storage.get(output["download_url"].split("?")[0] + "?sig=0000")
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "forbidden"

    assert (await http.get(f"/jobs/{job['id']}")).json()["status"] == "completed"
    listed = (await http.get(f"/jobs/{job['id']}/outputs")).json()
    assert listed == {"outputs": [output], "total": 1, "has_more": False}
    assert (await http.get("/outputs", params={"job_id": job["id"], "type": "image"})).json()[
        "total"
    ] == 1
    assert (await http.get(f"/outputs/{output['id']}")).json() == output
    assert (await http.delete(f"/outputs/{output['id']}")).status_code == 204
    assert (await http.get(f"/outputs/{output['id']}")).status_code == 404
    assert (await storage.get(output["download_url"])).status_code == 404


async def test_emulator_fail_node_fails_the_job(emulator, http) -> None:
    async with event_stream(emulator, ["job.failed", "job.completed"]) as ws:
        job = (await http.post("/jobs", json={"workflow": FAIL})).json()
        (frame,) = await until(ws, "job.failed", job["id"])
    error = frame["data"]["payload"]["error"]
    assert error == {"code": "oom", "message": "out of VRAM", "node_id": "1"}
    polled = (await http.get(f"/jobs/{job['id']}")).json()
    assert polled["status"] == "failed" and polled["error"] == error and polled["outputs"] == []


async def test_cancel_pending_running_and_terminal() -> None:
    with own_server(concurrency=1) as server:
        async with httpx.AsyncClient(base_url=server.api_url, headers=AUTH) as http:
            async with event_stream(server, ["job.cancelled", "job.progress"]) as ws:
                running = (await http.post("/jobs", json={"workflow": SLOW})).json()
                pending = (await http.post("/jobs", json={"workflow": SLOW})).json()
                await until(ws, "job.progress", running["id"])
                answer = await http.post(f"/jobs/{pending['id']}/cancel")
                assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
                answer = await http.post(f"/jobs/{running['id']}/cancel")
                assert answer.status_code == 200 and answer.json()["status"] == "running"
                frames = await until(ws, "job.cancelled", running["id"])
                assert frames[-1]["data"]["payload"]["status"] == "cancelled"
            again = await http.post(f"/jobs/{running['id']}/cancel")
            assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_request"
            assert (await http.post("/jobs/job_nope/cancel")).status_code == 404
            assert server.stats()["jobs"]["cancelled"] == 2


async def test_batch_and_validation_errors(emulator, http) -> None:
    batch = await http.post(
        "/jobs/batch", json={"jobs": [{"workflow": QUICK, "tags": ["b"]}, {"workflow": QUICK}]}
    )
    assert batch.status_code == 202
    body = batch.json()
    assert body["batch_id"].startswith("bat_") and len(body["jobs"]) == 2
    assert all(j["batch_id"] == body["batch_id"] for j in body["jobs"])
    listed = (await http.get("/jobs", params={"batch_id": body["batch_id"]})).json()
    assert listed["total"] == 2

    bad = image_workflow()
    bad["4"]["inputs"]["ckpt_name"] = "unknown.safetensors"
    del bad["3"]["inputs"]["seed"]
    refused = await http.post(
        "/jobs/batch", json={"jobs": [{"workflow": QUICK}, {"workflow": bad}]}
    )
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "validation_error"
    assert {(d["index"], d["node_id"], d["field"]) for d in error["details"]} == {
        (1, "3", "seed"),
        (1, "4", "ckpt_name"),
    }
    assert (await http.post("/jobs", json={"workflow": {}})).status_code == 422
    assert (
        await http.post("/jobs", content=b"{not json", headers={"content-type": "application/json"})
    ).json()["error"]["code"] == "invalid_request"
    strict = await http.post("/jobs", json={"workflow": QUICK, "priority": "high"})
    assert strict.status_code == 422 and strict.json()["error"]["details"][0]["field"] == "priority"

    checked = (await http.post("/workflows/validate", json={"workflow": bad})).json()
    assert checked["valid"] is False and {e["field"] for e in checked["errors"]} == {
        "seed",
        "ckpt_name",
    }
    assert (await http.post("/workflows/validate", json={"workflow": QUICK})).json() == {
        "valid": True,
        "errors": [],
    }


async def test_pagination_and_filters(emulator, http) -> None:
    tag = f"page-{uuid.uuid4().hex[:8]}"
    ids = [
        (await http.post("/jobs", json={"workflow": QUICK, "tags": [tag, "x"]})).json()["id"]
        for _ in range(5)
    ]
    first = (await http.get("/jobs", params={"tags": f"{tag},x", "limit": 2})).json()
    assert first["total"] == 5 and first["has_more"] is True
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:2]  # newest first
    last = (await http.get("/jobs", params={"tags": tag, "limit": 2, "offset": 4})).json()
    assert [j["id"] for j in last["jobs"]] == [ids[0]] and last["has_more"] is False
    assert (await http.get("/jobs", params={"tags": f"{tag},nope"})).json()["total"] == 0
    for params in (
        {"limit": 0},
        {"limit": 101},
        {"offset": -1},
        {"limit": "ten"},
        {"status": "done"},
    ):
        answer = await http.get("/jobs", params=params)
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "validation_error"
    default = (await http.get("/jobs")).json()
    assert len(default["jobs"]) <= 20


async def test_idempotency_key_replays(emulator, http) -> None:
    key = str(uuid.uuid4())
    first = await http.post("/jobs", json={"workflow": QUICK}, headers={"Idempotency-Key": key})
    second = await http.post("/jobs", json={"workflow": QUICK}, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    other = await http.post(
        "/jobs", json={"workflow": QUICK}, headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    assert other.json()["id"] != first.json()["id"]
    up = {"name": "a.png", "mime_type": "image/png", "size": 3}
    a = await http.post("/inputs/get-upload-url", json=up, headers={"Idempotency-Key": key})
    b = await http.post("/inputs/get-upload-url", json=up, headers={"Idempotency-Key": key})
    assert a.status_code == b.status_code == 201 and a.json()["id"] == b.json()["id"]


async def test_fault_after_creates_the_job_but_answers_500(emulator, http) -> None:
    key = str(uuid.uuid4())
    before = (await http.get("/jobs", params={"limit": 1})).json()["total"]
    emulator.inject_faults(500, count=1, path="/jobs", when="after")
    failed = await http.post("/jobs", json={"workflow": QUICK}, headers={"Idempotency-Key": key})
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "internal_error"
    assert (await http.get("/jobs", params={"limit": 1})).json()["total"] == before + 1
    retried = await http.post("/jobs", json={"workflow": QUICK}, headers={"Idempotency-Key": key})
    assert retried.status_code == 202
    assert (await http.get("/jobs", params={"limit": 1})).json()["total"] == before + 1
    assert (
        retried.json()["id"]
        == (await http.get("/jobs", params={"limit": 1})).json()["jobs"][0]["id"]
    )


async def test_fault_control_429_and_5xx(emulator, http) -> None:
    async with httpx.AsyncClient(base_url=emulator.url) as ctl:
        fault = {"status": 429, "count": 2, "retry_after": 3, "path": "/account"}
        answer = await ctl.post("/_emulator/faults", json=fault)
    assert answer.status_code == 200 and answer.json()["faults"][0]["remaining"] == 2
    assert (await http.get("/models/types")).status_code == 200  # another path is untouched
    for _ in range(2):
        limited = await http.get("/account")
        assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
        assert limited.json()["error"]["code"] == "rate_limited"
    assert (await http.get("/account")).status_code == 200
    emulator.inject_faults(503, count=5)
    assert (await http.get("/account")).status_code == 503
    emulator.reset_faults()
    account = (await http.get("/account")).json()
    assert account["email"] and isinstance(account["balance"], int) and account["id"]


# ---- inputs and models -------------------------------------------------------------------------
async def test_multipart_input_then_load_image(emulator, http, storage) -> None:
    from prefect_comfy_emulator.images import make_png

    png = make_png(40, 30, b"input")
    name = f"ref-{uuid.uuid4().hex[:6]}.png"
    async with event_stream(emulator, ["input.*", "job.completed"]) as ws:
        created = await http.post(
            "/inputs",
            files={"file": ("ignored.png", png, "image/png")},
            data={"name": name, "tags": "a,b"},
        )
        assert created.status_code == 201
        body = created.json()
        assert body["status"] == "uploading" and body["name"] == name and body["tags"] == ["a", "b"]
        (ready,) = await until(ws, "input.ready", body["id"])
        payload = ready["data"]["payload"]
        assert (
            payload["status"] == "ready"
            and payload["size"] == len(png)
            and payload["mime_type"] == "image/png"
        )
        assert (await storage.get(payload["download_url"])).content == png
        workflow = {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {
                "class_type": "SaveImage",
                "inputs": {"images": ["2", 0], "filename_prefix": "inv"},
            },
        }
        job = (await http.post("/jobs", json={"workflow": workflow})).json()
        (done,) = await until(ws, "job.completed", job["id"])
    image = await storage.get(done["data"]["payload"]["outputs"][0]["download_url"])
    assert png_size(image.content) == (40, 30)
    assert (await http.get("/inputs", params={"tags": "a"})).json()["total"] >= 1
    assert (await http.delete(f"/inputs/{body['id']}")).status_code == 204
    assert (await http.get(f"/inputs/{body['id']}")).status_code == 404
    again = await http.post("/jobs", json={"workflow": workflow})
    assert again.status_code == 422 and again.json()["error"]["details"][0]["field"] == "image"
    empty = await http.post("/inputs", files={"file": ("e.png", b"", "image/png")})
    assert empty.status_code == 422 and empty.json()["error"]["details"][0]["field"] == "file"
    unknown = await http.post(
        "/inputs", files={"file": ("e.png", b"x", "image/png")}, data={"colour": "red"}
    )
    assert unknown.status_code == 422


async def test_input_from_url(emulator, http) -> None:
    async with event_stream(emulator, ["input.*", "job.completed"]) as ws:
        job = (await http.post("/jobs", json={"workflow": QUICK})).json()
        (done,) = await until(ws, "job.completed", job["id"])
        url = done["data"]["payload"]["outputs"][0]["download_url"]
        created = await http.post("/inputs/from-url", json={"url": url, "tags": ["web"]})
        assert created.status_code == 202 and created.json()["status"] == "downloading"
        assert created.json()["name"] == done["data"]["payload"]["outputs"][0]["name"]
        (ready,) = await until(ws, "input.ready", created.json()["id"])
        assert ready["data"]["payload"]["mime_type"] == "image/png"
        broken = (
            await http.post("/inputs/from-url", json={"url": url.split("?")[0], "name": "x.png"})
        ).json()
        (failed,) = await until(ws, "input.failed", broken["id"])
    assert failed["data"]["payload"]["error"]["code"] == "download_failed"
    assert "403" in failed["data"]["payload"]["error"]["message"]
    assert (await http.post("/inputs/from-url", json={"url": "ftp://x/y"})).status_code == 422


async def test_presigned_upload(emulator, http, storage) -> None:
    data = b"0123456789"
    async with event_stream(emulator, ["input.*"]) as ws:
        ticket = await http.post(
            "/inputs/get-upload-url",
            json={"name": "big.bin", "mime_type": "application/x", "size": 10},
        )
        assert ticket.status_code == 201
        body = ticket.json()
        assert body["status"] == "pending_upload" and body["upload_expires_at"]
        assert "/developer/api/" not in body["upload_url"] and body["upload_url"].startswith(
            emulator.url
        )
        leaked = await storage.put(body["upload_url"], content=data, headers=AUTH)
        assert leaked.status_code == 400
        assert (await storage.put(body["upload_url"], content=data[:5])).status_code == 400
        assert (await storage.put(body["upload_url"], content=data)).status_code == 200
        completed = await http.post(f"/inputs/{body['id']}/complete")
        assert completed.status_code == 200 and completed.json()["status"] == "uploading"
        await until(ws, "input.ready", body["id"])

        lost = (
            await http.post(
                "/inputs/get-upload-url", json={"name": "l.bin", "mime_type": "x", "size": 1}
            )
        ).json()
        refused = await http.post(f"/inputs/{lost['id']}/complete")
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "upload_not_found"
        (failed,) = await until(ws, "input.failed", lost["id"])
        assert failed["data"]["payload"]["error"]["code"] == "upload_not_found"
    assert (
        await storage.put(emulator.url + "/_storage/uploads/nope", content=b"x")
    ).status_code == 403


async def test_models(emulator, http) -> None:
    assert (await http.get("/models/types")).json()["types"][:2] == ["checkpoint", "lora"]
    name = f"style-{uuid.uuid4().hex[:6]}.safetensors"
    async with event_stream(emulator, ["model.*"]) as ws:
        created = await http.post(
            "/models",
            files={"file": (name, b"weights", "application/octet-stream")},
            data={
                "type": "lora",
                "metadata": json.dumps({"base_model": "SD 1.5", "trained_words": ["sty"]}),
            },
        )
        assert created.status_code == 201, created.text
        (ready,) = await until(ws, "model.ready", created.json()["id"])
        model = ready["data"]["payload"]
        assert model["type"] == "lora" and model["metadata"] == {
            "base_model": "SD 1.5",
            "trained_words": ["sty"],
        }
        ticket = await http.post(
            "/models/get-upload-url",
            json={"name": "v.safetensors", "type": "vae", "mime_type": "x", "size": 1},
        )
        assert ticket.status_code == 201
    workflow = image_workflow()
    workflow["10"] = {"class_type": "LoraLoader", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora_name": name, "strength_model": 1, "strength_clip": 1}}  # fmt: skip
    workflow["3"]["inputs"]["model"] = ["10", 0]
    assert (await http.post("/workflows/validate", json={"workflow": workflow})).json()[
        "valid"
    ] is True
    workflow["10"]["inputs"]["lora_name"] = (
        "v1-5-pruned-emaonly.safetensors"  # a checkpoint, not a LoRA
    )
    assert (await http.post("/workflows/validate", json={"workflow": workflow})).json()[
        "valid"
    ] is False
    for bad in ({"type": "hypernetwork"}, {}, {"type": "lora", "metadata": "[1]"}):
        refused = await http.post("/models", files={"file": ("m", b"w")}, data=bad)
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "validation_error"
    listed = (await http.get("/models", params={"type": "lora"})).json()
    assert all(m["type"] == "lora" for m in listed["models"]) and listed["total"] >= 1
    assert (await http.get("/models", params={"type": "bogus"})).status_code == 422


# ---- authentication ----------------------------------------------------------------------------
async def test_wrong_key_is_refused_without_echo(emulator) -> None:
    async with httpx.AsyncClient(base_url=emulator.api_url) as anon:
        for headers in ({"Authorization": f"Bearer {WRONG_KEY}"}, {}, {"Authorization": WRONG_KEY}):
            answer = await anon.get("/jobs", headers=headers)
            assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized"
            assert WRONG_KEY not in answer.text
    refused_before = emulator.stats()["ws_handshakes_refused"]
    for query in (False, True):
        with pytest.raises(InvalidStatus) as info:
            async with event_stream(emulator, [], key=WRONG_KEY, query=query):
                pass
        assert info.value.response.status_code == 401
        body = info.value.response.body.decode()
        assert json.loads(body)["error"]["code"] == "unauthorized" and WRONG_KEY not in body
    assert emulator.stats()["ws_handshakes_refused"] == refused_before + 2
    async with event_stream(emulator, ["*"], query=True):
        pass


async def test_accounts_are_isolated(emulator, http) -> None:
    async with (
        event_stream(emulator, ["*"], key=OTHER_KEY) as other,
        event_stream(emulator, ["job.completed"]) as mine,
    ):
        job = (await http.post("/jobs", json={"workflow": QUICK})).json()
        await until(mine, "job.completed", job["id"])
        await other.send(json.dumps({"type": "ping"}))
        assert await recv(other) == {"type": "pong"}  # no event of the other account came first
    async with httpx.AsyncClient(
        base_url=emulator.api_url, headers={"Authorization": f"Bearer {OTHER_KEY}"}
    ) as c:
        assert (await c.get(f"/jobs/{job['id']}")).status_code == 404


# ---- WebSocket protocol ------------------------------------------------------------------------
async def test_websocket_frames(emulator, http) -> None:
    async with event_stream(emulator, ["job.completed"]) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv(ws) == {"type": "pong"}
        await ws.send(
            json.dumps({"type": "subscribe", "data": {"events": ["input.*", "job.completed"]}})
        )
        assert (await recv(ws))["data"]["events"] == ["job.completed", "input.*"]
        for bad in (
            "not json",
            json.dumps([1]),
            json.dumps({"type": "dance"}),
            json.dumps({"data": {}}),
        ):
            await ws.send(bad)
            frame = await recv(ws)
            assert frame["type"] == "error" and frame["data"]["code"] == "invalid_message"
        for data in ({"events": ["job.**"]}, {"events": []}, {"events": "job.*"}, None):
            await ws.send(json.dumps({"type": "subscribe", "data": data}))
            assert (await recv(ws))["type"] == "error"
        await ws.send(b"\x00binary")
        assert (await recv(ws))["type"] == "error"
        await ws.send(json.dumps({"type": "unsubscribe", "data": {"events": ["job.completed"]}}))
        assert await recv(ws) == {"type": "unsubscribed", "data": {"events": ["input.*"]}}
        job = (await http.post("/jobs", json={"workflow": QUICK})).json()
        await eventually(lambda: emulator.state.jobs[job["id"]].status == "completed")
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv(ws) == {"type": "pong"}  # the job's events were not delivered


# ---- controls ----------------------------------------------------------------------------------
async def test_pause_resume_and_duplicates(emulator, http) -> None:
    async with (
        event_stream(emulator, ["job.completed"]) as ws,
        httpx.AsyncClient(base_url=emulator.url) as ctl,
    ):
        assert (await ctl.post("/_emulator/pause-events")).json() == {"paused": True}
        job = (await http.post("/jobs", json={"workflow": QUICK})).json()
        await eventually(lambda: emulator.state.jobs[job["id"]].status == "completed")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), scaled(0.2))
        resumed = (await ctl.post("/_emulator/resume-events")).json()
        assert resumed["delivered"] >= 1
        await until(ws, "job.completed", job["id"])
        assert (await ctl.post("/_emulator/duplicate-events", json={"enabled": True})).json() == {
            "enabled": True
        }
        job = (await http.post("/jobs", json={"workflow": QUICK})).json()
        first = await until(ws, "job.completed", job["id"])
        second = await recv(ws)
        assert first[-1] == second
        assert (await ctl.post("/_emulator/duplicate-events", json={"on": 1})).status_code == 422


async def test_malformed_frames_and_drop(emulator) -> None:
    async with event_stream(emulator, ["*"]) as ws, httpx.AsyncClient(base_url=emulator.url) as ctl:
        assert (await ctl.post("/_emulator/malformed-frame")).json()["connections"] >= 1
        garbage = await asyncio.wait_for(ws.recv(), scaled(5))
        with pytest.raises(ValueError):
            json.loads(garbage)
        assert "type" not in json.loads(await asyncio.wait_for(ws.recv(), scaled(5)))
        assert emulator.stats()["ws_connections_open"] >= 1
        assert (await ctl.post("/_emulator/drop-connections")).json()["dropped"] >= 1
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), scaled(5))
        assert info.value.rcvd is None  # cut without a close frame
    assert emulator.stats()["ws_connections_open"] == 0


async def test_close_after_connected_closes_during_the_handshake(emulator) -> None:
    """The chaos suite's handshake-time close: ``connected``, then a close before any subscribe."""
    async with httpx.AsyncClient(base_url=emulator.url) as ctl:
        assert (await ctl.post("/_emulator/close-after-connected", json={"count": 1})).json() == {
            "count": 1
        }
        refused = await ctl.post("/_emulator/close-after-connected", json={"count": -1})
        assert refused.status_code == 422 and "error" in refused.json()
    before = emulator.stats()["ws_closed_at_handshake"]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with websockets.connect(
        emulator.ws_url, additional_headers=headers, open_timeout=5
    ) as ws:
        assert (await recv(ws))["type"] == "connected"
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), scaled(5))
        assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    assert emulator.stats()["ws_closed_at_handshake"] == before + 1
    async with event_stream(emulator, ["*"]):  # only the next one: this one subscribes
        pass


async def test_reset_stats_and_unknown_routes() -> None:
    with own_server() as server:
        async with httpx.AsyncClient(base_url=server.url) as ctl:
            api = {"headers": AUTH}
            job = (await ctl.post(server.api_url + "/jobs", json={"workflow": QUICK}, **api)).json()
            await eventually(lambda: server.stats()["jobs"]["completed"] == 1)
            stats = (await ctl.get("/_emulator/stats")).json()
            assert set(stats) == {
                "ws_connections_open", "ws_connections_total", "ws_handshakes_refused",
                "requests_total", "jobs", "events_sent", "ws_closed_slow", "ws_closed_at_handshake",
            }  # fmt: skip
            assert stats["requests_total"] == 1
            internal = (await ctl.get(f"/_emulator/jobs/{job['id']}")).json()
            assert internal["cancel_requested"] is False
            assert (await ctl.post("/_emulator/reset")).json() == {"reset": True}
            assert (await ctl.get(server.api_url + f"/jobs/{job['id']}", **api)).status_code == 404
            assert server.stats()["jobs"]["completed"] == 0
            missing = await ctl.get(server.api_url + "/archives", **api)
            assert missing.status_code == 404
            assert "not implemented by the emulator" in missing.json()["error"]["message"]
            wrong_method = await ctl.put(server.api_url + "/jobs", **api)
            assert (
                wrong_method.status_code == 405
                and wrong_method.json()["error"]["code"] == "invalid_request"
            )
            assert (await ctl.get("/nowhere")).json()["error"]["code"] == "not_found"
            server.pause_events()
            server.duplicate_events(True)
            server.inject_faults(502)
            server.reset_faults()
            assert (await ctl.get("/_emulator/faults")).json() == {"faults": []}
            assert server.state.bus.paused is False and server.state.bus.duplicate is False


async def test_async_context_manager() -> None:
    config = EmulatorConfig(api_keys=[API_KEY], seed=5)
    async with EmulatorServer(config) as server, httpx.AsyncClient() as client:
        assert (await client.get(server.api_url + "/account", headers=AUTH)).status_code == 200
        assert server.url.startswith("http://127.0.0.1:")
        assert API_KEY not in repr(server)


def test_cli_serves_and_stops_on_sigterm() -> None:
    env = {**os.environ, "COMFY_API_KEY": API_KEY}
    script = "from prefect_comfy.cli import main; main()"
    process = subprocess.Popen(
        [sys.executable, "-c", script, "emulator", "--port", "0", "--step-duration", "0.01"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("Comfy emulator listening on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        assert httpx.get(url + "/_emulator/health", timeout=5).json() == {"ok": True}
        assert (
            httpx.get(url + "/developer/api/v1/account", headers=AUTH, timeout=5).status_code == 200
        )
        v2_line = process.stdout.readline()
        assert v2_line.startswith(f"Comfy API v2 face at {url}/api/v2"), v2_line
        assert httpx.get(url + "/api/v2/health", timeout=5).json() == {"status": "ok"}
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
        assert process.returncode == 0
        assert API_KEY not in line + v2_line + output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _keep_alive_round_trips(server: EmulatorServer, count: int) -> list[float]:
    """Seconds from sending a request to holding the whole reply, on one reused connection."""
    import socket
    import time

    request = (
        f"GET {server.api_url}/account HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {API_KEY}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()
    seconds = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(request)
            while b"\r\n\r\n" not in buffer:
                buffer += sock.recv(65536)
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = int(
                next(
                    line.split(b":", 1)[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
            )
            while len(buffer) < length:
                buffer += sock.recv(65536)
            buffer = buffer[length:]
            seconds.append(time.perf_counter() - started)
    return seconds


def test_rest_replies_are_not_held_back_by_nagle(emulator) -> None:
    """uvicorn writes a reply's headers and body separately; with Nagle's algorithm on, the body
    waits for the client's delayed ACK (~40 ms on Linux) on every reused connection. The fastest
    of several round trips on one connection is far below that once ``TCP_NODELAY`` is set (the
    minimum, not the mean, so that a loaded machine cannot fail it; the first round trip is left
    out: Linux acknowledges at once early in a connection)."""
    import socket

    fastest = min(_keep_alive_round_trips(emulator, 9)[1:])
    assert fastest < 0.025, f"a keep-alive reply took at least {fastest * 1000:.0f} ms"

    def nodelay_of_accepted() -> list[int]:
        assert emulator._server is not None
        return [
            protocol.transport.get_extra_info("socket").getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY
            )
            for protocol in emulator._server.server_state.connections
            if getattr(protocol, "transport", None) is not None
        ]

    with socket.create_connection(("127.0.0.1", emulator.port), timeout=10):
        flags = eventually_sync(lambda: emulator._call(nodelay_of_accepted))
    assert all(flags), flags
