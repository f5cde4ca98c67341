"""Reading workflow files: encodings, size, and the PNGs ComfyUI saves (issue 16, point 7)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from prefect_comfy import load_workflow
from prefect_comfy.exceptions import InvalidWorkflow
from prefect_comfy.workflows import load as load_module
from prefect_comfy.workflows.png import PNG_SIGNATURE, png_text_chunks, workflow_of_png

API = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}}}
SAVE = {"nodes": [{"id": 1, "type": "EmptyImage", "widgets_values": [8, 8, 1, 0]}], "links": []}


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(*chunks: tuple[bytes, bytes]) -> bytes:
    """A 1x1 PNG with the given extra chunks before its pixels (as PIL writes ComfyUI's)."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    pixels = _chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00"))
    extra = b"".join(_chunk(kind, body) for kind, body in chunks)
    return PNG_SIGNATURE + header + extra + pixels + _chunk(b"IEND", b"")


def text(keyword: str, value: object) -> tuple[bytes, bytes]:
    return b"tEXt", keyword.encode() + b"\x00" + json.dumps(value).encode()


def itext(keyword: str, value: object, *, compressed: bool) -> tuple[bytes, bytes]:
    data = json.dumps(value).encode()
    body = zlib.compress(data) if compressed else data
    flag = b"\x01\x00" if compressed else b"\x00\x00"
    return b"iTXt", keyword.encode() + b"\x00" + flag + b"\x00\x00" + body


def test_a_comfyui_png_gives_its_save_format_workflow_first(tmp_path: Path) -> None:
    path = tmp_path / "ComfyUI_00001_.png"
    path.write_bytes(png(text("prompt", API), text("workflow", SAVE)))
    assert load_workflow(path) == SAVE
    assert load_workflow(str(path)) == SAVE


def test_a_png_with_only_the_prompt_chunk_gives_the_api_graph(tmp_path: Path) -> None:
    path = tmp_path / "picture.png"
    path.write_bytes(png(text("prompt", API)))
    assert load_workflow(path) == API


@pytest.mark.parametrize("compressed", [False, True])
def test_itxt_chunks_are_read(compressed: bool) -> None:
    data = png(itext("workflow", SAVE, compressed=compressed), (b"tEXt", b"parameters\x00x"))
    assert workflow_of_png(data) == SAVE
    assert png_text_chunks(data)["parameters"] == "x"


def test_a_png_without_a_workflow_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(png((b"tEXt", b"Software\x00GIMP")))
    with pytest.raises(InvalidWorkflow, match="carries no ComfyUI workflow") as info:
        load_workflow(path)
    assert str(path) in str(info.value) and "SaveImage" in str(info.value)


def test_a_png_cut_short_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    path.write_bytes(png(text("workflow", SAVE))[:60])
    with pytest.raises(InvalidWorkflow, match="cut short"):
        load_workflow(path)


def test_a_png_chunk_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "odd.png"
    path.write_bytes(png((b"tEXt", b"workflow\x00{not json")))
    with pytest.raises(InvalidWorkflow, match="'workflow' chunk is not JSON"):
        load_workflow(path)


def test_a_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(SAVE).encode())
    assert load_workflow(path) == SAVE
    assert load_workflow("\ufeff" + json.dumps(API)) == API


def test_a_file_that_is_not_utf8_is_refused_saying_so(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(
        json.dumps({"1": {"class_type": "X", "inputs": {"t": "é"}}}, ensure_ascii=False).encode(
            "latin-1"
        )
    )
    with pytest.raises(InvalidWorkflow, match="not UTF-8") as info:
        load_workflow(path)
    assert "save the workflow as UTF-8" in str(info.value)


def test_the_size_is_checked_before_reading(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps(API))
    monkeypatch.setattr(load_module, "MAX_WORKFLOW_BYTES", 10)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read a file over the cap"))
    with pytest.raises(InvalidWorkflow, match="more than the 10"):
        load_workflow(path)
