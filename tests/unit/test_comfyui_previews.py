"""ComfyUI's binary preview frames: parsed, attributed to the right job, bounded; bad ones dropped."""

from __future__ import annotations

import base64
import struct

import pytest

from prefect_comfy.backends.comfyui.previews import (
    MAX_PREVIEW_BYTES,
    PREVIEW_IMAGE,
    PREVIEW_IMAGE_WITH_METADATA,
    parse_preview,
)
from prefect_comfy.models import ComfyEvent, preview_image
from tests.support.comfyui_frames import JPEG, PNG, legacy, with_metadata


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


def test_v2_preview_frames_map_to_preview_events_and_bad_ones_are_dropped() -> None:
    from prefect_comfy.backends.v2.mapping import preview_of

    good = {
        "node_id": "3",
        "content_type": "image/jpeg",
        "data_base64": base64.b64encode(JPEG).decode(),
    }
    event = preview_of("job-1", good, ["t"])
    assert event is not None and event.event == "job.preview" and event.resource_id == "job-1"
    assert preview_image(event) == (JPEG, "image/jpeg") and event.payload["node_id"] == "3"
    assert event.payload["tags"] == ["t"]
    huge = base64.b64encode(JPEG + b"\x00" * MAX_PREVIEW_BYTES).decode()
    for bad in (
        {},
        {**good, "data_base64": "not base64!"},
        {**good, "data_base64": ""},
        {**good, "data_base64": huge},
        {**good, "content_type": "text/html"},
        {**good, "data_base64": 5},
    ):
        assert preview_of("job-1", bad) is None, bad
