"""ComfyUI's binary preview frames: parsed, attributed to the right job, bounded; bad ones dropped."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import uuid

import pytest

from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
from prefect_comfy.backends.comfyui.previews import (
    MAX_PREVIEW_BYTES,
    PREVIEW_IMAGE,
    PREVIEW_IMAGE_WITH_METADATA,
    parse_preview,
)
from prefect_comfy.models import ComfyEvent, preview_image
from tests.support.waiting import eventually
from tests.unit.test_comfyui_backend import FAST, GRAPH, FakeComfyUI, FakeConnect, collect, find

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32


def legacy(image: bytes, fmt: int = 2) -> bytes:
    """A ``PREVIEW_IMAGE`` frame as ComfyUI's ``send_image`` makes it."""
    return struct.pack(">I", PREVIEW_IMAGE) + struct.pack(">I", fmt) + image


def with_metadata(image: bytes, meta: dict) -> bytes:
    """A ``PREVIEW_IMAGE_WITH_METADATA`` frame as ``send_image_with_metadata`` makes it."""
    raw = json.dumps(meta).encode()
    return (
        struct.pack(">I", PREVIEW_IMAGE_WITH_METADATA) + struct.pack(">I", len(raw)) + raw + image
    )


def test_both_layouts_parse() -> None:
    png = parse_preview(legacy(PNG, 2))
    assert png is not None and png.mime_type == "image/png" and png.image == PNG
    assert png.prompt_id is None
    jpeg = parse_preview(legacy(JPEG, 1))
    assert jpeg is not None and jpeg.mime_type == "image/jpeg"
    meta = {"prompt_id": "p-1", "node_id": "3", "image_type": "image/jpeg"}
    named = parse_preview(bytearray(with_metadata(JPEG, meta)))
    assert named is not None and (named.prompt_id, named.node_id) == ("p-1", "3")
    assert named.image == JPEG


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00\x00\x00",
        struct.pack(">I", PREVIEW_IMAGE),  # no format word
        struct.pack(">I", PREVIEW_IMAGE) + b"\x00\x00",  # truncated format word
        legacy(PNG, 7),  # unknown format
        legacy(b"", 2),  # no image
        legacy(JPEG, 2),  # says PNG, is not one
        legacy(PNG[:5], 2),  # truncated image header
        struct.pack(">I", 3) + b"text",  # TEXT frames are not previews
        struct.pack(">I", 99) + PNG,  # unknown event type
        struct.pack(">I", PREVIEW_IMAGE_WITH_METADATA) + struct.pack(">I", 500) + b"{}",  # short
        struct.pack(">I", PREVIEW_IMAGE_WITH_METADATA) + struct.pack(">I", 2**31) + b"{}",
        struct.pack(">I", PREVIEW_IMAGE_WITH_METADATA) + struct.pack(">I", 3) + b"{x}" + PNG,
        struct.pack(">I", PREVIEW_IMAGE_WITH_METADATA) + struct.pack(">I", 2) + b"[]" + PNG,
        struct.pack(">I", PREVIEW_IMAGE_WITH_METADATA) + struct.pack(">I", 2) + b"\xff\xfe" + PNG,
        with_metadata(PNG, {"prompt_id": "p", "image_type": "image/gif"}),
        legacy(PNG + b"\x00" * MAX_PREVIEW_BYTES, 2),  # over the cap
    ],
)
def test_malformed_truncated_and_oversize_frames_are_dropped(frame: bytes) -> None:
    assert parse_preview(frame) is None


def test_the_cap_is_inclusive() -> None:
    exact = PNG + b"\x00" * (MAX_PREVIEW_BYTES - len(PNG))
    assert parse_preview(legacy(exact)) is not None
    assert parse_preview(legacy(exact + b"\x00")) is None


def test_preview_image_reads_only_preview_events() -> None:
    event = ComfyEvent(
        event="job.preview",
        payload={"id": "j", "mime_type": "image/png", "image": base64.b64encode(PNG).decode()},
    )
    assert preview_image(event) == (PNG, "image/png")
    assert preview_image(ComfyEvent(event="job.progress", payload={"id": "j"})) is None
    bad = ComfyEvent(event="job.preview", payload={"id": "j", "mime_type": "x", "image": "%%"})
    assert preview_image(bad) is None


class BinarySocket:
    """Adds binary frames to the unit tests' fake socket."""

    @staticmethod
    def push(sock, raw: bytes) -> None:
        sock.loop.call_soon_threadsafe(sock.frames.put_nowait, raw)


async def test_stream_turns_previews_into_events_of_the_right_job() -> None:
    fake = FakeComfyUI()
    connect = FakeConnect()
    b = ComfyUIBackend(
        fake.origin,
        client_id=f"unit-{uuid.uuid4()}",
        transport=fake.transport(),
        settings=FAST,
        connect=connect,
    )
    events, task = await collect(b)
    sock = connect.sockets[0]
    job = await b.submit(GRAPH, tags=["t"])

    BinarySocket.push(sock, legacy(PNG))  # before any frame names a prompt: nobody's
    sock.send("execution_start", {"prompt_id": job.id})
    sock.send("executing", {"node": "2", "prompt_id": job.id})
    for frame in (b"\x00", legacy(JPEG, 2), legacy(PNG + b"\x00" * MAX_PREVIEW_BYTES)):
        BinarySocket.push(sock, frame)  # dropped, and the stream goes on
    BinarySocket.push(sock, legacy(PNG))
    BinarySocket.push(sock, with_metadata(JPEG, {"prompt_id": "other", "image_type": "image/jpeg"}))
    first = await eventually(lambda: find(events, "job.preview", job.id), timeout=5)
    assert first.payload["mime_type"] == "image/png" and first.payload["tags"] == ["t"]
    assert preview_image(first) == (PNG, "image/png")
    named = await eventually(lambda: find(events, "job.preview", "other"), timeout=5)
    assert named.payload["size"] == len(JPEG)

    sock.send("executing", {"node": None, "prompt_id": job.id})  # the prompt is done
    BinarySocket.push(sock, legacy(PNG))  # a late legacy frame names no prompt: dropped
    sock.send("status", {"status": {"exec_info": {"queue_remaining": 0}}})
    await asyncio.sleep(0)
    stream = next(iter(b._memory.streams))
    await eventually(lambda: stream.previews_dropped >= 5, timeout=5)
    assert len([e for e in events if e.event == "job.preview" and e.resource_id == job.id]) == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await b.aclose()
