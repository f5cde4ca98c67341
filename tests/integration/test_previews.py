"""Live previews from a real ComfyUI 0.3.75 started with ``--preview-method latent2rgb``: the txt2img
job on the random-weight checkpoint yields ``job.preview`` events of its own job only, the CLI's
``--previews DIR`` leaves the newest image there, and a flow run's artifact shows one while the job
runs, replaced by the outputs table at the end (issue 17, section 4)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import random
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from PIL import Image

from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
from prefect_comfy.models import PREVIEW_EVENT, ComfyEvent, preview_image, with_previews
from prefect_comfy.waiting.waits import wait_for
from tests.support.comfyui_server import RunningComfyUI
from tests.support.txt2img import txt2img_graph
from tests.support.waiting import eventually

pytestmark = pytest.mark.comfyui

JOB_TIMEOUT = 600  # 8 steps take 10-40 s on 2 shared cores; a cold load adds 10-30 s


def fresh_seed() -> int:
    return random.randrange(1, 2**31)


async def test_a_sampling_job_yields_previews_of_its_own_job_only(
    comfyui_server: RunningComfyUI, test_checkpoint: str
) -> None:
    """Previews reach the wait's callback as images of the job; another client's stream, open
    meanwhile on the same server, gets none of them."""
    async with (
        ComfyUIBackend(comfyui_server.url, client_id=f"mine-{uuid.uuid4()}") as backend,
        ComfyUIBackend(comfyui_server.url, client_id=f"other-{uuid.uuid4()}") as other,
    ):
        theirs: list[ComfyEvent] = []
        connected = asyncio.Event()

        async def on_connect() -> None:
            connected.set()

        async def listen() -> None:
            async for event in other.events(["job.*"], on_connect=on_connect):
                theirs.append(event)

        listener = asyncio.create_task(listen())
        await asyncio.wait_for(connected.wait(), 60)
        job = await backend.submit(txt2img_graph(seed=fresh_seed(), prefix="preview"))
        seen: list[ComfyEvent] = []
        end = await wait_for(
            backend, "job", job.id, timeout=JOB_TIMEOUT, on_progress=with_previews(seen.append)
        )
        # The other client hears of the end too (a broadcast status, then /history), a little later:
        # the proof that its stream was up all along.
        await eventually(
            lambda: any(e.event == "job.completed" and e.resource_id == job.id for e in theirs),
            timeout=60,
        )
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    assert end.event == "job.completed", end
    previews = [e for e in seen if e.event == PREVIEW_EVENT]
    assert previews, [e.event for e in seen]
    assert {e.resource_id for e in previews} == {job.id}
    image, mime = preview_image(previews[-1]) or (b"", "")
    assert mime in ("image/jpeg", "image/png")
    assert Image.open(io.BytesIO(image)).size[0] > 0  # a real image ComfyUI drew
    assert not [e for e in theirs if e.event == PREVIEW_EVENT], "another client got our previews"


def test_cli_previews_dir_gets_the_newest_image(
    comfyui_server: RunningComfyUI, test_checkpoint: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_", "PREFECT_API"))}
    cli = [sys.executable, "-m", "prefect_comfy.cli", "--url", comfyui_server.url]
    workflow = tmp_path / "txt2img.json"
    workflow.write_text(json.dumps(txt2img_graph(seed=fresh_seed(), prefix="cli-preview")))
    previews = tmp_path / "previews"
    done = subprocess.run(
        [*cli, "run", str(workflow), "--no-prefect",
         "--out", str(tmp_path / "o"), "--previews", str(previews)],
        env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(p.name for p in previews.iterdir())
    assert files in (["preview.jpg"], ["preview.png"]), files  # one file, overwritten, no leftovers
    image = Image.open(previews / files[0])
    image.load()
    assert image.size[0] > 0


def test_cli_previews_that_is_a_file_is_refused_in_one_line(tmp_path: Path) -> None:
    workflow = tmp_path / "w.json"
    workflow.write_text(json.dumps(txt2img_graph()))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = subprocess.run(
        [sys.executable, "-m", "prefect_comfy.cli", "run", str(workflow), "--no-prefect",
         "--previews", str(blocker)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert f"--previews {blocker}: is a file" in done.stderr, done.stderr


@pytest.mark.prefect
async def test_the_flows_artifact_shows_a_live_preview_then_the_outputs(
    comfyui_server: RunningComfyUI, test_checkpoint: str, prefect_api_url: str, tmp_path: Path
) -> None:
    """``run_comfy_workflow``: read back through the Prefect API while the job runs, the job's
    outputs artifact holds a preview image; when the flow is done, its latest is the outputs table."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
        ArtifactFilter,
        ArtifactFilterType,
    )

    from prefect_comfy.backends.comfyui.block import ComfyUIServer
    from prefect_comfy.orchestration.flows import run_comfy_workflow

    markdown = ArtifactFilter(type=ArtifactFilterType(any_=["markdown"]))
    async with get_client() as client:
        before = {a.id for a in await client.read_artifacts(artifact_filter=markdown)}
    live: dict[str, str] = {}  # key -> a live preview's markdown seen during the run
    run = asyncio.create_task(
        asyncio.to_thread(
            run_comfy_workflow,
            ComfyUIServer(url=comfyui_server.url),
            txt2img_graph(seed=fresh_seed(), prefix="flow-preview"),
            output_dir=str(tmp_path),
            return_state=True,
        )
    )
    async with get_client() as client:
        while not run.done():
            for artifact in await client.read_artifacts(artifact_filter=markdown):
                text = str(artifact.data or "")
                if artifact.id not in before and "Live preview of Comfy job" in text:
                    live[str(artifact.key)] = text
            await asyncio.sleep(0.5)  # a poll of the UI's own source, not a synchronisation
        state = await run
        assert state.is_completed(), state
        assert len(live) == 1, list(live)
        [(key, text)] = live.items()
        found = re.search(
            r"!\[live preview\]\(data:(image/(?:jpeg|png));base64,([A-Za-z0-9+/=]+)\)", text
        )
        assert found, text[:300]
        Image.open(io.BytesIO(base64.b64decode(found.group(2)))).load()
        [final] = await client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key]))
        )
        assert "Live preview" not in str(final.data) and "Outputs" in str(final.data)[:400], str(
            final.data
        )[:400]


async def test_previews_through_the_api_proxy(api_proxy, test_checkpoint: str) -> None:
    """Comfy API v2's SSE ``preview`` frames (comfy-api-proxy relays ComfyUI's) become
    ``job.preview`` events of the job."""
    from prefect_comfy.backends.v2.backend import V2Backend

    async with V2Backend(api_proxy.url, api_proxy.token) as backend:
        job = await backend.submit(txt2img_graph(seed=fresh_seed(), prefix="v2-preview"))
        seen: list[ComfyEvent] = []
        end = await wait_for(
            backend, "job", job.id, timeout=JOB_TIMEOUT, on_progress=with_previews(seen.append)
        )
    assert end.event == "job.completed", end
    previews = [e for e in seen if e.event == PREVIEW_EVENT]
    assert previews and {e.resource_id for e in previews} == {job.id}, [e.event for e in seen]
    image, _ = preview_image(previews[-1]) or (b"", "")
    Image.open(io.BytesIO(image)).load()
