"""ComfyUI's binary preview frames, built as its ``server.py`` builds them (for unit tests)."""

from __future__ import annotations

import json
import struct

from prefect_comfy.backends.comfyui.previews import PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32


def legacy(image: bytes, fmt: int = 2) -> bytes:
    """A ``PREVIEW_IMAGE`` frame as ``send_image`` makes it (format 1 JPEG, 2 PNG)."""
    return struct.pack(">I", PREVIEW_IMAGE) + struct.pack(">I", fmt) + image


def with_metadata(image: bytes, meta: dict) -> bytes:
    """A ``PREVIEW_IMAGE_WITH_METADATA`` frame as ``send_image_with_metadata`` makes it."""
    raw = json.dumps(meta).encode()
    return (
        struct.pack(">I", PREVIEW_IMAGE_WITH_METADATA) + struct.pack(">I", len(raw)) + raw + image
    )
