"""An interrupt from ComfyUI's own UI ends ``run_comfy_workflow``'s flow run Cancelled.

Real ComfyUI 0.3.75, real Prefect (the test harness). The interrupt is what the UI's stop button
sends, ``POST /interrupt``, from another HTTP client: the flow run ends Cancelled as a cancel from
Prefect does (issue 11 item 7), with a message that names the job.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from prefect_comfy.backends.comfyui.block import ComfyUIServer
from prefect_comfy.orchestration.flows import run_comfy_workflow
from tests.support.comfyui_graphs import long_graph
from tests.support.comfyui_server import RunningComfyUI
from tests.support.waiting import eventually, scaled

pytestmark = [pytest.mark.comfyui, pytest.mark.prefect]


async def test_an_interrupt_from_comfyui_ends_the_flow_run_cancelled(
    prefect_api_url, comfyui_server: RunningComfyUI, tmp_path
) -> None:
    run = asyncio.create_task(
        asyncio.to_thread(
            run_comfy_workflow,
            ComfyUIServer(url=comfyui_server.url),
            long_graph(1280, 6),  # about 10 s on 2 idle cores: still running when interrupted
            output_dir=str(tmp_path),
            timeout=120,
            return_state=True,
        )
    )
    async with httpx.AsyncClient(base_url=comfyui_server.url, timeout=10) as http:

        async def running() -> str | None:
            queue = (await http.get("/queue")).json()
            return queue["queue_running"][0][1] if queue["queue_running"] else None

        prompt_id = await eventually(running, timeout=60, interval=0.2, message="prompt running")
        (await http.post("/interrupt")).raise_for_status()  # the UI's stop button
    state = await asyncio.wait_for(run, scaled(90))
    assert state.is_cancelled(), state
    assert prompt_id in state.message and "cancelled on the Comfy server" in state.message
    assert not list(tmp_path.iterdir())  # nothing downloaded
