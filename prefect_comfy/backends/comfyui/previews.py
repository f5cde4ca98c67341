"""ComfyUI's binary WebSocket frames: live preview images while a sampler runs, parsed with no I/O.

ComfyUI (started with ``--preview-method latent2rgb`` or ``taesd``) sends each preview only to the
socket whose client id submitted the prompt (``server.py``, ``send_bytes`` with ``sid``), as one
binary frame. Every frame starts with a 4-byte big-endian event type (``protocol.BinaryEventTypes``):

- ``1`` ``PREVIEW_IMAGE``: a 4-byte big-endian image format (``1`` JPEG, ``2`` PNG), then the image;
  it does not say which prompt it belongs to (the prompt being executed for this client does);
- ``4`` ``PREVIEW_IMAGE_WITH_METADATA`` (sent instead when the client announced
  ``supports_preview_metadata`` in a first ``feature_flags`` message): a 4-byte big-endian length,
  that many bytes of JSON metadata (``prompt_id``, ``node_id``, ``image_type``), then the image.

Anything else (text frames of type 3, unknown types, a truncated or malformed frame, an image over
`MAX_PREVIEW_BYTES`, bytes that are not a JPEG or PNG) is dropped: `parse_preview`
returns ``None`` and never raises.

Example:
    >>> frame = (1).to_bytes(4, "big") + (2).to_bytes(4, "big") + b"\\x89PNG\\r\\n\\x1a\\n..."
    >>> parse_preview(frame).mime_type
    'image/png'
    >>> parse_preview(b"\\x00\\x00") is None
    True
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from prefect_comfy.models import MAX_PREVIEW_IMAGE_BYTES

__all__ = [
    "FEATURE_FLAGS_MESSAGE",
    "MAX_PREVIEW_BYTES",
    "PREVIEW_IMAGE",
    "PREVIEW_IMAGE_WITH_METADATA",
    "Preview",
    "parse_preview",
]

logger = logging.getLogger(__name__)

PREVIEW_IMAGE = 1
"""``BinaryEventTypes.PREVIEW_IMAGE``: format word, then the image."""
PREVIEW_IMAGE_WITH_METADATA = 4
"""``BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA``: metadata length, JSON metadata, the image."""
MAX_PREVIEW_BYTES = MAX_PREVIEW_IMAGE_BYTES
"""A preview image larger than this is dropped (ComfyUI's are a few KB: 512 px at most)."""
MAX_METADATA_BYTES = 4096
"""The most JSON metadata one preview frame may carry."""
FEATURE_FLAGS_MESSAGE = json.dumps(
    {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
)
"""The first message a client sends so that ComfyUI names the prompt of each preview."""

_FORMATS = {1: "image/jpeg", 2: "image/png"}
_MAGIC = {"image/jpeg": b"\xff\xd8\xff", "image/png": b"\x89PNG\r\n\x1a\n"}


@dataclass(frozen=True)
class Preview:
    """One preview image: its bytes, type, and the prompt and node it names (if it names them)."""

    image: bytes
    mime_type: str
    prompt_id: str | None = None
    node_id: str | None = None


def _word(raw: bytes, at: int) -> int | None:
    if len(raw) < at + 4:
        return None
    return int.from_bytes(raw[at : at + 4], "big")


def parse_preview(
    raw: bytes | bytearray | memoryview, *, max_bytes: int = MAX_PREVIEW_BYTES
) -> Preview | None:
    """The preview a binary frame holds, or ``None`` (not a preview, malformed, or too big)."""
    try:
        data = bytes(raw)
        kind = _word(data, 0)
        if kind == PREVIEW_IMAGE:
            mime = _FORMATS.get(_word(data, 4) or 0)
            image, meta = data[8:], {}
        elif kind == PREVIEW_IMAGE_WITH_METADATA:
            length = _word(data, 4)
            if length is None or length > MAX_METADATA_BYTES or len(data) < 8 + length:
                return None
            meta = json.loads(data[8 : 8 + length])
            if not isinstance(meta, dict):
                return None
            mime = str(meta.get("image_type") or "").lower() or None
            image = data[8 + length :]
        else:
            return None
        if mime not in _MAGIC or len(image) > max_bytes or not image.startswith(_MAGIC[mime]):
            return None
        prompt_id, node_id = meta.get("prompt_id"), meta.get("node_id")
        return Preview(
            image=image,
            mime_type=mime,
            prompt_id=str(prompt_id) if prompt_id else None,
            node_id=str(node_id) if node_id is not None else None,
        )
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
