"""The workflow inside a PNG that ComfyUI saved: its ``prompt`` and ``workflow`` text chunks.

ComfyUI's ``SaveImage`` writes two text chunks into each picture: ``prompt`` (the API-format graph
that ran) and ``workflow`` (the editor's save format). `workflow_of_png` reads them without
decoding the picture.

Which one is used: the ``workflow`` chunk (save format) when present, because it still says which
seeds were set to randomize, so that running the picture again runs its workflow, as opening it in
the editor and pressing Queue does (the conversion needs the server's node catalog); a PNG with
only a ``prompt`` chunk gives that. To make the very same picture again, pass the seed the run
recorded as an input.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

from prefect_comfy.exceptions import InvalidWorkflow

__all__ = ["PNG_SIGNATURE", "png_text_chunks", "workflow_of_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
"""The first eight bytes of every PNG file."""

_WANTED = ("workflow", "prompt")


def png_text_chunks(data: bytes, source: str = "The PNG") -> dict[str, str]:
    """The ``tEXt``, ``zTXt`` and ``iTXt`` chunks of a PNG, keyword -> text.

    Raises:
        InvalidWorkflow: not a PNG, or a chunk is cut short.

    Example:
        >>> chunk = b"prompt\\x00{}"
        >>> body = struct.pack(">I", len(chunk)) + b"tEXt" + chunk + b"\\x00" * 4
        >>> png_text_chunks(PNG_SIGNATURE + body + b"\\x00\\x00\\x00\\x00IEND\\xaeB`\\x82")
        {'prompt': '{}'}
    """
    if not data.startswith(PNG_SIGNATURE):
        raise InvalidWorkflow(f"{source} is not a PNG file")
    found: dict[str, str] = {}
    at = len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        body = data[at + 8 : at + 8 + length]
        if len(body) < length:
            raise InvalidWorkflow(
                f"{source} is cut short (a {kind.decode('latin-1')} chunk ends early)"
            )
        at += 12 + length
        if kind == b"IEND":
            break
        text = _text_of(kind, body)
        if text is not None:
            found.setdefault(*text)
    return found


def _text_of(kind: bytes, body: bytes) -> tuple[str, str] | None:
    keyword, _, rest = body.partition(b"\x00")
    name = keyword.decode("latin-1")
    try:
        if kind == b"tEXt":
            # ComfyUI writes UTF-8 into tEXt (the PNG spec says Latin-1); accept both
            return name, _decode(rest)
        if kind == b"zTXt":
            return name, _decode(zlib.decompress(rest[1:]))
        if kind == b"iTXt":
            compressed, rest = rest[0], rest[2:]
            _language, _, rest = rest.partition(b"\x00")
            _translated, _, text = rest.partition(b"\x00")
            return name, (zlib.decompress(text) if compressed else text).decode("utf-8")
    except (zlib.error, UnicodeDecodeError, IndexError):
        return None
    return None


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def workflow_of_png(data: bytes, source: str = "The PNG") -> Any:
    """The workflow a ComfyUI picture carries: its ``workflow`` chunk, else its ``prompt`` chunk.

    Raises:
        InvalidWorkflow: not a PNG, no such chunk (a picture ComfyUI did not save, or one whose
            metadata was stripped), or a chunk that is not JSON.
    """
    chunks = png_text_chunks(data, source)
    for name in _WANTED:
        text = chunks.get(name)
        if text is None:
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise InvalidWorkflow(f"{source}: its {name!r} chunk is not JSON: {exc}") from None
        if isinstance(value, dict) and value:
            return value
    raise InvalidWorkflow(
        f"{source} carries no ComfyUI workflow (no 'workflow' or 'prompt' text chunk): give a "
        "PNG saved by ComfyUI's SaveImage with its metadata, or the workflow's JSON file"
    )
