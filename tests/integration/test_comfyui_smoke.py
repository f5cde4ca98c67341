"""Smoke test against a real ComfyUI 0.3.75 server (installed by scripts/install-comfyui.sh).

EmptyImage(64x64) -> SaveImage, submitted with raw HTTP + WebSocket (no project code), so that a
broken reference peer is told apart from a broken backend.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
import websockets

from tests.support.comfyui_server import RunningComfyUI
from tests.support.waiting import eventually

pytestmark = pytest.mark.comfyui

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def _wait_for_terminal(ws, prompt_id: str, timeout: float) -> list[dict]:
    """Collect this prompt's JSON frames until execution_success/error/interrupted."""
    frames: list[dict] = []

    async def read() -> list[dict]:
        while True:
            raw = await ws.recv()
            if isinstance(raw, bytes):  # binary preview frames
                continue
            msg = json.loads(raw)
            frames.append(msg)
            data = msg.get("data") or {}
            if data.get("prompt_id") == prompt_id and msg["type"] in (
                "execution_success",
                "execution_error",
                "execution_interrupted",
            ):
                return frames

    try:
        return await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise AssertionError(
            f"no terminal message for {prompt_id} within {timeout} s: {frames}"
        ) from None


async def test_empty_image_to_png(comfyui_server: RunningComfyUI) -> None:
    client_id = str(uuid.uuid4())
    graph = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xFF8800},
        },
        "2": {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": "smoke"},
        },
    }
    async with (
        httpx.AsyncClient(base_url=comfyui_server.url, timeout=30) as http,
        websockets.connect(comfyui_server.ws_url(client_id), max_size=None) as ws,
    ):
        resp = await http.post("/prompt", json={"prompt": graph, "client_id": client_id})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        prompt_id = body["prompt_id"]
        assert body["node_errors"] == {}

        frames = await _wait_for_terminal(ws, prompt_id, timeout=60)
        types = [f["type"] for f in frames if (f.get("data") or {}).get("prompt_id") == prompt_id]
        assert types[-1] == "execution_success", comfyui_server.log_tail()
        assert "execution_start" in types
        executed = [f["data"] for f in frames if f["type"] == "executed"]
        assert executed and executed[0]["node"] == "2"

        async def history() -> dict | None:
            r = await http.get(f"/history/{prompt_id}")
            r.raise_for_status()
            return r.json().get(prompt_id)  # can be {} right after the terminal message

        entry = await eventually(history, timeout=10, interval=0.1, message=f"/history/{prompt_id}")
        assert entry["status"]["status_str"] == "success"
        assert entry["status"]["completed"] is True
        images = entry["outputs"]["2"]["images"]
        assert len(images) == 1
        image = images[0]
        assert image["type"] == "output"
        assert image["filename"].startswith("smoke")

        view = await http.get(
            "/view",
            params={
                "filename": image["filename"],
                "subfolder": image["subfolder"],
                "type": image["type"],
            },
        )
        assert view.status_code == 200
        assert view.content.startswith(PNG_MAGIC)
        assert (comfyui_server.output_dir / image["subfolder"] / image["filename"]).is_file()
