"""Text to image on a real ComfyUI 0.3.75 with the random-weight test checkpoint, direct and through
comfy-api-proxy (Comfy API v2): the PNG, and the progress a user watches, step by step.

CheckpointLoaderSimple -> 2x CLIPTextEncode -> EmptyLatentImage 64x64 -> KSampler 8 steps ->
VAEDecode -> SaveImage (the demo's graph, ``prefect_comfy/cli/demo_txt2img.json``). ComfyUI runs
the loader, the latent, the two encoders, then KSampler: on a warm server the four before KSampler are cached, so during
KSampler four of the seven nodes are done and the job is past 57 %.
"""

from __future__ import annotations

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
from PIL import Image, ImageStat

from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
from prefect_comfy.backends.v2.backend import V2Backend
from prefect_comfy.models import ComfyEvent
from prefect_comfy.orchestration.events.names import job_position, job_progress_labels
from prefect_comfy.waiting.waits import wait_for
from tests.support.comfyui_server import RunningComfyUI
from tests.support.terminal import run_in_terminal
from tests.support.txt2img import STEPS, txt2img_graph

pytestmark = pytest.mark.comfyui

#: Nodes done before KSampler starts (loader, latent, two encoders) out of seven.
BEFORE_KSAMPLER = 100 * 4 / 7
JOB_TIMEOUT = 600  # 8 steps take 10-40 s on 2 shared cores; a cold load adds 10-30 s
BAR_STEPS = 24
"""KSampler steps of the CLI bar's job: enough redraws to see several steps on a fast machine."""
ARTIFACT_STEPS = 40
"""KSampler steps of the artifact's job: several seconds of sampling on an idle machine."""


def fresh_seed() -> int:
    return random.randrange(1, 2**31)


def check_progress(progress: list[ComfyEvent], *, every_step: bool = True) -> list[float]:
    """What every path must show: the percentage never goes back, a KSampler event per step with
    its name (``every_step``; comfy-api-proxy sends at most two a second, so through it only
    some), and no "step n/1" for nodes without steps. Returns the KSampler percentages."""
    percents = [e.payload["progress"] for e in progress]
    assert percents == sorted(percents), percents
    ksampler = [e.payload for e in progress if e.payload.get("node_class") == "KSampler"]
    steps = sorted({p["step"] for p in ksampler if p.get("steps") == STEPS and p.get("step")})
    if not every_step:
        assert steps and set(steps) <= set(range(1, STEPS + 1)), ksampler
        return [p["progress"] for p in ksampler if p.get("step")]
    assert steps == list(range(1, STEPS + 1)), ksampler
    for event in progress:
        labels = job_progress_labels(event.payload)
        assert not labels.get("comfy.step", "").endswith("/1"), event.payload
        if labels.get("comfy.node"):
            assert labels.get("comfy.node-class"), event.payload  # a name, never a bare id
    where = [job_position(job_progress_labels(e.payload)) for e in progress]
    assert "KSampler step 8/8" in where, where
    return [p["progress"] for p in ksampler if p.get("step")]


async def check_png(backend, job_id: str, dest: Path) -> None:
    [output] = [o for o in (await backend.get_job(job_id)).outputs if not o.temporary]
    path = await backend.download(output, dest)
    image = Image.open(io.BytesIO(path.read_bytes()))
    assert image.size == (64, 64)
    # Noise, not black: random weights give every channel some spread.
    assert min(ImageStat.Stat(image.convert("RGB")).stddev) > 1.0


async def test_txt2img_on_comfyui_downloads_a_png_and_shows_every_step(
    comfyui_server: RunningComfyUI, test_checkpoint: str, tmp_path: Path
) -> None:
    async with ComfyUIBackend(comfyui_server.url) as backend:
        job = await backend.submit(txt2img_graph(seed=fresh_seed()))
        progress: list[ComfyEvent] = []
        end = await wait_for(
            backend, "job", job.id, timeout=JOB_TIMEOUT, on_progress=progress.append
        )
        assert end.event == "job.completed", end
        check_progress(progress)
        await check_png(backend, job.id, tmp_path)
    log = comfyui_server.log_path.read_text(errors="replace")
    assert "unet missing" not in log and "clip missing" not in log, log[-3000:]
    assert "Missing VAE keys" not in log and "unet unexpected" not in log, log[-3000:]


async def test_the_first_job_of_a_process_on_a_warm_server_counts_its_cached_nodes(
    comfyui_server: RunningComfyUI, test_checkpoint: str
) -> None:
    """Regression (issue 17, 3.1): a new client id is a new process; its socket must be up before
    the prompt is posted, or ``execution_cached`` is missed and KSampler shows 2-14 % for 59-71 %."""
    async with ComfyUIBackend(comfyui_server.url, client_id=f"warmup-{uuid.uuid4()}") as backend:
        warmup = await backend.submit(txt2img_graph(seed=fresh_seed()))
        assert (await wait_for(backend, "job", warmup.id, timeout=JOB_TIMEOUT)).event == (
            "job.completed"
        )
    from prefect_comfy.waiting.waits import submit_connected

    async with ComfyUIBackend(comfyui_server.url, client_id=f"fresh-{uuid.uuid4()}") as backend:
        job, covered = await submit_connected(backend, txt2img_graph(seed=fresh_seed()))
        progress: list[ComfyEvent] = []
        end = await wait_for(
            backend,
            "job",
            job.id,
            timeout=JOB_TIMEOUT,
            on_progress=progress.append,
            covered_since=covered,
        )
        assert end.event == "job.completed", end
        during = check_progress(progress)
        assert min(during) > BEFORE_KSAMPLER, during


async def test_txt2img_through_the_api_proxy_never_goes_back_and_names_its_nodes(
    api_proxy, test_checkpoint: str, tmp_path: Path
) -> None:
    """Regression (issue 17, 3.2): the proxy counts only the nodes it has seen (99.9 % after the
    first node, then 95 %) and sends no class names; the submitted graph has both."""
    async with V2Backend(api_proxy.url, api_proxy.token) as backend:
        job = await backend.submit(txt2img_graph(seed=fresh_seed()))
        progress: list[ComfyEvent] = []
        end = await wait_for(
            backend, "job", job.id, timeout=JOB_TIMEOUT, on_progress=progress.append
        )
        assert end.event == "job.completed", end
        during = check_progress(progress, every_step=False)
        # The server is warm here (the tests above ran the graph): the cached nodes count too.
        assert min(during) > BEFORE_KSAMPLER and max(during) < 99.9, during
        await check_png(backend, job.id, tmp_path)


@pytest.mark.prefect
async def test_the_cli_bar_shows_each_step_of_a_warm_first_job(
    comfyui_server: RunningComfyUI, test_checkpoint: str, prefect_api_url: str, tmp_path: Path
) -> None:
    """``prefect-comfy run --block <ComfyUIServer> --no-prefect`` in a terminal: the bar names
    KSampler and its steps, and (the first job of a new process on a warm server) stands past the
    four nodes done before it."""
    async with ComfyUIBackend(comfyui_server.url, client_id=f"warmup-{uuid.uuid4()}") as backend:
        warmup = await backend.submit(txt2img_graph(seed=fresh_seed()))
        await wait_for(backend, "job", warmup.id, timeout=JOB_TIMEOUT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_")}
    env.update(PREFECT_API_URL=prefect_api_url, TERM="xterm-256color", COLUMNS="160")
    cli = [sys.executable, "-m", "prefect_comfy.cli"]
    name = f"txt2img-{uuid.uuid4().hex[:8]}"
    saved = subprocess.run(
        [*cli, "blocks", "create", "comfyui", name, "--url", comfyui_server.url],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    workflow = tmp_path / "txt2img.json"
    # 24 steps: on an idle machine a step of this graph takes about 0.1 s, and the bar redraws 8
    # times a second; 8 steps could end between two redraws of a step.
    workflow.write_text(json.dumps(txt2img_graph(seed=fresh_seed(), prefix="cli", steps=BAR_STEPS)))
    code, screen = run_in_terminal(
        [*cli, "run", str(workflow), "--block", name, "--no-prefect", "--out", str(tmp_path / "o")],
        env,
        timeout=JOB_TIMEOUT,
    )
    assert code == 0, screen[-3000:]
    shown = re.findall(rf"(\d+)%\s+KSampler #3\s+step (\d+)/{BAR_STEPS}", screen)
    steps = [int(step) for _, step in shown]
    assert len(set(steps)) >= 4 and steps == sorted(steps), screen[-3000:]  # redrawn as it ran
    assert min(int(percent) for percent, _ in shown) >= int(BEFORE_KSAMPLER), shown
    assert "step 0/1" not in screen and "completed" in screen
    assert str(tmp_path / "o") in screen


@pytest.mark.prefect
def larger(graph: dict) -> dict:
    """The graph with a 256x256 latent (node 5, EmptyLatentImage): each sampler step is slower."""
    graph["5"]["inputs"].update(width=256, height=256)
    return graph


async def test_the_flows_progress_artifact_ends_at_ksampler_or_later(
    comfyui_server: RunningComfyUI, test_checkpoint: str, prefect_api_url: str, tmp_path: Path
) -> None:
    """``run_comfy_workflow`` on the txt2img graph: the progress artifact's descriptions, read while
    the job runs, move forward, and the last before the end names KSampler or a later node."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    from prefect_comfy.backends.comfyui.block import ComfyUIServer
    from prefect_comfy.orchestration.flows import run_comfy_workflow

    progress_only = ArtifactFilter(type=ArtifactFilterType(any_=["progress"]))
    async with get_client() as client:
        before = {a.id for a in await client.read_artifacts(artifact_filter=progress_only)}
    seen: dict[str, list[str]] = {}
    run = asyncio.create_task(
        asyncio.to_thread(
            run_comfy_workflow,
            ComfyUIServer(url=comfyui_server.url),
            # Long enough for the 1-s artifact writes and this 0.5-s poll to see KSampler at work on
            # an idle machine (8 steps took 1.2 s there, and 40 steps of 64x64 about 2 s: only "0%"
            # was seen before the end); 256x256 makes each step some 16x the work.
            larger(txt2img_graph(seed=fresh_seed(), prefix="flow", steps=ARTIFACT_STEPS)),
            output_dir=str(tmp_path),
            return_state=True,
        )
    )
    async with get_client() as client:
        while not run.done():
            for artifact in await client.read_artifacts(artifact_filter=progress_only):
                text = artifact.description or ""
                if artifact.id not in before and (
                    not seen.get(str(artifact.id)) or seen[str(artifact.id)][-1] != text
                ):
                    seen.setdefault(str(artifact.id), []).append(text)
            await asyncio.sleep(0.5)  # a poll of the UI's own source, not a synchronisation
    state = await run
    assert state.is_completed(), state
    [descriptions] = seen.values()
    running = [d for d in descriptions if "completed" not in d]
    assert running, descriptions
    assert re.search(r"(KSampler|VAEDecode|SaveImage)", running[-1]), descriptions
    assert not any("step 0/1" in d for d in descriptions), descriptions
    percents = [int(m.group(1)) for d in descriptions if (m := re.match(r"(?:\w+ · )?(\d+)%", d))]
    assert percents == sorted(percents), descriptions
