"""The emulator facing bad clients (issue 11, items 13 and 14), over real sockets.

Each test here failed before its fix: deep JSON, NaN and lone surrogates got 500s (and NaN created a job
that broke ``GET /jobs`` until a reset), concurrent posts with one Idempotency-Key created one job each, a
client that never reads made the emulator hold every frame, and a huge body was read whole.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from prefect_comfy_emulator import EmulatorConfig, EmulatorServer
from tests.support.keys import API_KEY
from tests.support.waiting import eventually, scaled

AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUICK = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "hostile"}},
}  # fmt: skip
JSON_ROUTES = (
    "/jobs",
    "/jobs/batch",
    "/inputs/from-url",
    "/inputs/get-upload-url",
    "/models/from-url",
    "/models/get-upload-url",
    "/workflows/validate",
)


@contextlib.contextmanager
def own_server(**overrides: Any) -> Iterator[EmulatorServer]:
    config = {"api_keys": [API_KEY], "seed": 7, "step_duration": 0.0, "upload_duration": 0.0}
    with EmulatorServer(EmulatorConfig(**{**config, **overrides})) as server:
        yield server


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    with own_server() as emu:
        yield emu


def snapshot(emu: EmulatorServer) -> tuple[int, int, int, int]:
    state = emu.state
    return len(state.jobs), len(state.uploads), len(state.outputs), len(state.idempotency)


def assert_envelope(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text[:300]
    error = answer.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"]
    return error


def with_input(value: Any) -> dict[str, Any]:
    workflow = json.loads(json.dumps(QUICK))
    workflow["1"]["inputs"]["extra"] = value
    return workflow


# ---- item 13: bad JSON -------------------------------------------------------------------------
async def test_deep_json_is_refused_on_every_json_route(server: EmulatorServer) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    before = snapshot(server)
    async with httpx.AsyncClient(base_url=server.api_url, headers=AUTH, timeout=10) as http:
        for route in JSON_ROUTES:
            for body in (deep, b'{"workflow": ' + b"[" * 200 + b"]" * 200 + b"}"):
                answer = await http.post(route, content=body)
                error = assert_envelope(answer, 400)
                assert error["code"] == "invalid_request" and "nested" in error["message"]
        assert (await http.get("/jobs")).status_code == 200
    assert snapshot(server) == before


@pytest.mark.parametrize(
    "raw",
    [
        '{"workflow": ' + json.dumps(QUICK).replace('"color": 0', '"color": 0, "x": NaN') + "}",
        '{"workflow": '
        + json.dumps(QUICK).replace('"color": 0', '"color": 0, "x": -Infinity')
        + "}",
        '{"workflow": ' + json.dumps(QUICK).replace('"color": 0', '"color": 0, "x": 1e999') + "}",
        json.dumps({"workflow": with_input("\ud800")}),
    ],
    ids=["nan", "infinity", "overflow", "lone-surrogate"],
)
async def test_unanswerable_json_is_refused_and_creates_nothing(
    server: EmulatorServer, raw: str
) -> None:
    before = snapshot(server)
    async with httpx.AsyncClient(base_url=server.api_url, headers=AUTH, timeout=10) as http:
        for route in ("/jobs", "/workflows/validate"):
            answer = await http.post(route, content=raw.encode("utf-8", "surrogatepass"))
            assert assert_envelope(answer, 400)["code"] == "invalid_request"
        listing = await http.get("/jobs")
        assert listing.status_code == 200, "GET /jobs must keep working after a refused post"
    assert snapshot(server) == before


# ---- item 13: idempotency under concurrency ----------------------------------------------------
async def test_concurrent_posts_with_one_idempotency_key_create_one_job(
    server: EmulatorServer,
) -> None:
    """Five posts with one key, each body sent in two halves; no half-sent post may pass on."""
    key = str(uuid.uuid4())
    body = json.dumps({"workflow": QUICK}).encode()
    first_halves = asyncio.Barrier(5)

    async def halves() -> Any:
        yield body[:20]
        await first_halves.wait()  # every request is now inside the emulator, reading its body
        yield body[20:]

    jobs_before = len(server.state.jobs)
    clients = [
        httpx.AsyncClient(base_url=server.api_url, headers=AUTH, timeout=10) for _ in range(5)
    ]
    try:
        answers = await asyncio.gather(
            *(
                c.post(
                    "/jobs",
                    content=halves(),
                    headers={"Idempotency-Key": key, "Content-Length": str(len(body))},
                )
                for c in clients
            )
        )
    finally:
        for c in clients:
            await c.aclose()
    assert [a.status_code for a in answers] == [202] * 5, [a.text[:200] for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 4
    assert len(server.state.jobs) == jobs_before + 1


async def test_a_refused_post_releases_its_idempotency_key(server: EmulatorServer) -> None:
    key = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=server.api_url, headers=AUTH, timeout=10) as http:
        bad = await http.post("/jobs", json={"workflow": {}}, headers={"Idempotency-Key": key})
        assert_envelope(bad, 422)
        good = await http.post("/jobs", json={"workflow": QUICK}, headers={"Idempotency-Key": key})
        assert good.status_code == 202 and "Idempotent-Replayed" not in good.headers


# ---- item 14: request bodies -------------------------------------------------------------------
def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    ("path", "code"),
    [("/developer/api/v1/jobs", "invalid_request"), ("/api/v2/jobs", "payload_too_large")],
    ids=["v1", "v2"],
)
def test_a_declared_huge_body_is_refused_before_it_is_sent(path: str, code: str) -> None:
    with own_server(max_request_bytes=1024 * 1024) as emu:
        before = snapshot(emu)
        with socket.create_connection(("127.0.0.1", emu.port), timeout=10) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode()
                + f"Authorization: Bearer {API_KEY}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 300000000\r\n\r\n"
                + b'{"workflow": '
            )
            # Only the headers and 13 bytes were sent: an answer now proves nothing was buffered.
            status, headers, body = _read_response(sock)
            assert status == 413 and headers.get("connection") == "close"
            error = json.loads(body)["error"]
            assert error["code"] == code and "max_request_bytes" in error["message"]
            assert sock.recv(1) == b"", "the server must close instead of reading 300 MB"
        assert snapshot(emu) == before


def test_a_chunked_body_is_cut_at_the_limit() -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"workflow": "'
        for _ in range(64):  # 4 MiB, four times the limit
            sent += 65536
            yield b"x" * 65536
        yield b'"}'

    with own_server(max_request_bytes=1024 * 1024) as emu:
        before = snapshot(emu)
        with httpx.Client(base_url=emu.api_url, headers=AUTH, timeout=10) as http:
            try:
                answer = http.post("/jobs", content=chunks())
            except httpx.HTTPError:
                answer = None  # the server may close while the rest is still being written
        if answer is not None:
            assert_envelope(answer, 413)
        assert emu.stats()["requests_total"] == 1
        assert snapshot(emu) == before


# ---- item 14: a WebSocket client that never reads ----------------------------------------------
def _masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def never_reading_client(emu: EmulatorServer) -> socket.socket:
    """A WebSocket client with a tiny receive buffer that subscribes to everything, then stops reading."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", emu.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /developer/api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {API_KEY}\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    subscribe = json.dumps({"type": "subscribe", "data": {"events": ["*"]}}).encode()
    sock.sendall(_masked_text(subscribe))
    return sock


async def test_a_websocket_client_that_never_reads_is_bounded_and_closed() -> None:
    limit = 256 * 1024
    with own_server(ws_send_buffer_bytes=limit, ws_close_timeout=0.5) as emu:
        sock = await asyncio.to_thread(never_reading_client, emu)
        try:
            await eventually(lambda: any(c.patterns for c in emu.state.bus.connections))
            conn = next(iter(emu.state.bus.connections))
            # Each job.completed frame carries the workflow: about 100 kB each, 6 MB in all.
            big = json.loads(json.dumps(QUICK))
            big["3"] = {
                "class_type": "CLIPTextEncode",
                "inputs": {"text": "y" * 100_000, "clip": ["9", 1]},
            }
            big["9"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}}  # fmt: skip
            async with httpx.AsyncClient(base_url=emu.api_url, headers=AUTH, timeout=10) as http:
                for _ in range(60):
                    answer = await http.post("/jobs", json={"workflow": big})
                    assert answer.status_code == 202, answer.text[:300]
            await eventually(lambda: emu.stats()["ws_connections_open"] == 0, timeout=15)
            assert emu.stats()["ws_closed_slow"] == 1
            assert conn.peak_bytes <= limit
            assert conn.pending_bytes <= limit
        finally:
            sock.close()


async def test_a_slow_reader_of_small_frames_keeps_its_connection(server: EmulatorServer) -> None:
    """The bound is on what waits, not on traffic: a client that reads keeps its connection."""
    import websockets

    async with websockets.connect(server.ws_url, additional_headers=AUTH, open_timeout=5) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "subscribe", "data": {"events": ["job.*"]}}))
        await ws.recv()
        async with httpx.AsyncClient(base_url=server.api_url, headers=AUTH, timeout=10) as http:
            ids = [
                (await http.post("/jobs", json={"workflow": QUICK})).json()["id"] for _ in range(20)
            ]
        done: set[str] = set()
        async with asyncio.timeout(scaled(15)):
            while not set(ids) <= done:
                frame = json.loads(await ws.recv())
                if frame.get("data", {}).get("event") == "job.completed":
                    done.add(frame["data"]["payload"]["id"])
    assert server.stats()["ws_closed_slow"] == 0


async def test_unicode_digits_in_node_ids_and_numbers_are_no_crash(server: EmulatorServer) -> None:
    """``"²".isdigit()`` is true but ``int("²")`` fails: node ids and numbers are read as ASCII."""
    workflow = {
        "²": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "1": {"class_type": "SaveImage", "inputs": {"images": ["²", 0], "filename_prefix": "u"}},
    }  # fmt: skip
    async with httpx.AsyncClient(base_url=server.api_url, headers=AUTH, timeout=10) as http:
        answer = await http.post("/workflows/validate", json={"workflow": workflow})
        assert answer.status_code == 200, answer.text[:300]
        job = (await http.post("/jobs", json={"workflow": workflow})).json()
        await eventually(lambda: server.state.jobs[job["id"]].status == "completed")
    async with httpx.AsyncClient(base_url=server.url + "/api/v2", headers=AUTH, timeout=10) as v2:
        answer = await v2.get("/jobs", params={"limit": "²"})
        assert answer.status_code == 422, answer.text[:300]
