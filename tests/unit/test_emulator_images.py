"""PNG output of the emulator: signature, IHDR, CRCs, determinism."""

from __future__ import annotations

import struct
import zlib

import pytest

from prefect_comfy_emulator.images import PNG_SIGNATURE, make_png, png_chunks, png_size


def test_png_is_well_formed_and_sized() -> None:
    data = make_png(48, 20, b"seed")
    assert data.startswith(PNG_SIGNATURE)
    chunks = png_chunks(data)  # checks every CRC
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, _, _, _ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (width, height, depth, colour) == (48, 20, 8, 2)
    raw = zlib.decompress(chunks[1][1])
    assert len(raw) == 20 * (1 + 48 * 3)
    assert png_size(data) == (48, 20)


def test_png_is_deterministic_and_seed_dependent() -> None:
    assert make_png(16, 16, b"a") == make_png(16, 16, b"a")
    assert make_png(16, 16, b"a") != make_png(16, 16, b"b")


def test_large_png_is_quick_and_valid() -> None:
    assert png_size(make_png(1024, 1024, b"x")) == (1024, 1024)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: b"GIF89a" + d[6:],
        lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:],  # flips a bit inside IHDR: CRC mismatch
        lambda d: d[:30],
    ],
)
def test_broken_png_is_refused(mutate) -> None:
    with pytest.raises(ValueError):
        png_chunks(mutate(make_png(8, 8, b"s")))


def test_png_needs_positive_size() -> None:
    with pytest.raises(ValueError):
        make_png(0, 5, b"s")
