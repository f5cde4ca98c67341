"""Real PNG files made with ``zlib`` and ``struct`` only: what the emulator's jobs "generate".

Example:
    >>> from prefect_comfy_emulator.images import make_png, png_size
    >>> png_size(make_png(32, 16, b"seed"))
    (32, 16)
"""

from __future__ import annotations

import hashlib
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def make_png(width: int, height: int, seed: bytes) -> bytes:
    """An 8-bit RGB PNG of diagonal colour bands whose colours follow from ``seed``.

    The same size and seed always give the same bytes. Rows are slices of one long band, so even a
    1024×1024 image takes a few milliseconds.
    """
    if width < 1 or height < 1:
        raise ValueError("a PNG needs a width and a height of at least 1")
    digest = hashlib.sha256(seed).digest()
    base_r, base_g, base_b, step_r, step_g, step_b = digest[:6]
    step_r, step_g, step_b = step_r % 7 + 1, step_g % 5 + 1, step_b % 3 + 1
    band = bytearray()
    for i in range(width + height):
        band += bytes(
            ((base_r + i * step_r) & 255, (base_g + i * step_g) & 255, (base_b + i * step_b) & 255)
        )
    band_bytes = bytes(band)
    row_len = 3 * width
    raw = b"".join(b"\x00" + band_bytes[3 * y : 3 * y + row_len] for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The ``(type, data)`` chunks of a PNG, checking the signature and every CRC.

    Raises:
        ValueError: the bytes are not a well-formed PNG.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG: bad signature")
    chunks: list[tuple[bytes, bytes]] = []
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError("truncated PNG chunk header")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        crc_bytes = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc_bytes) != 4:
            raise ValueError("truncated PNG chunk")
        if struct.unpack(">I", crc_bytes)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise ValueError(f"bad CRC in PNG chunk {kind!r}")
        chunks.append((kind, body))
        pos += 12 + length
        if kind == b"IEND":
            break
    if not chunks or chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
        raise ValueError("a PNG must start with IHDR and end with IEND")
    return chunks


def png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG's IHDR (the whole file is checked)."""
    ihdr = png_chunks(data)[0][1]
    width, height = struct.unpack(">II", ihdr[:8])
    return width, height
