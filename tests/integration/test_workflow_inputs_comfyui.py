"""A hand-made save-format workflow on the real ComfyUI 0.3.75 (issue 16): converted with the
server's own ``/object_info``, given inputs by name, run by ``run_comfy_workflow`` and by
``prefect-comfy run --set``; the PNG it saves runs again as a workflow.

The workflow is model-free: EmptyImage (titled "Canvas") -> Reroute -> ImageInvert -> SaveImage
(titled "Save"), and a Note.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from prefect_comfy import ComfyUIServer, InvalidInputs, load_workflow, run_comfy_workflow
from prefect_comfy.backends.catalog import forget_catalogs
from prefect_comfy.workflows.png import png_text_chunks
from tests.support.comfyui_server import RunningComfyUI
from tests.support.save_workflows import invert

pytestmark = [pytest.mark.comfyui, pytest.mark.prefect]

CLI = [sys.executable, "-m", "prefect_comfy.cli"]


@pytest.fixture(autouse=True)
def _fresh_catalogs():
    forget_catalogs()
    yield
    forget_catalogs()


def test_save_format_with_inputs_runs_on_comfyui(
    comfyui_server: RunningComfyUI, prefect_api_url: str, tmp_path: Path
) -> None:
    server = ComfyUIServer(url=comfyui_server.url)
    prefix = f"named-{uuid.uuid4().hex[:8]}"
    result = run_comfy_workflow(
        server,
        invert(),
        inputs={"Canvas.color": 0x112233, "Save.filename_prefix": prefix, "1.width": 32},
        output_dir=str(tmp_path),
    )
    assert result.status == "completed"
    (path,) = result.paths
    assert path.name.startswith(prefix)
    prompt = json.loads(png_text_chunks(path.read_bytes())["prompt"])
    assert prompt["1"]["inputs"]["color"] == 0x112233 and prompt["1"]["inputs"]["width"] == 32
    assert {n["class_type"] for n in prompt.values()} == {"EmptyImage", "ImageInvert", "SaveImage"}

    # the picture is a workflow: run it again, with a new prefix
    again = run_comfy_workflow(
        server,
        str(path),
        inputs={"Save.filename_prefix": prefix + "-again"},
        output_dir=str(tmp_path / "again"),
    )
    assert again.status == "completed" and again.paths[0].name.startswith(prefix + "-again")
    assert load_workflow(path)["1"]["inputs"]["color"] == 0x112233


def test_a_value_out_of_the_catalogs_range_submits_nothing(
    comfyui_server: RunningComfyUI, prefect_api_url: str
) -> None:
    import httpx

    def history() -> int:
        return len(httpx.get(comfyui_server.url + "/api/history").json())

    before = history()
    with pytest.raises(InvalidInputs, match="above the maximum 16384"):
        run_comfy_workflow(
            ComfyUIServer(url=comfyui_server.url), invert(), inputs={"1.width": 10**6}
        )
    queue = httpx.get(comfyui_server.url + "/api/queue").json()
    assert history() == before and not queue["queue_pending"] and not queue["queue_running"]


@pytest.mark.parametrize("through_prefect", [False, True])
def test_cli_run_with_set_on_comfyui(
    comfyui_server: RunningComfyUI, prefect_api_url: str, tmp_path: Path, through_prefect: bool
) -> None:
    name = f"comfyui-{uuid.uuid4().hex[:8]}"
    ComfyUIServer(url=comfyui_server.url).save(name, overwrite=True)
    workflow = tmp_path / "invert.json"
    workflow.write_text(json.dumps(invert()))
    prefix = f"cli-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_")}
    env.update(PREFECT_API_URL=prefect_api_url, NO_COLOR="1")
    args = [*CLI, "run", str(workflow), "--block", f"comfyui-server/{name}", "-o", "out"]
    args += ["--set", f"Save.filename_prefix={prefix}", "--set", "Canvas.color=255"]
    if not through_prefect:
        args.append("--no-prefect")
    done = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    files = [Path(line) for line in done.stdout.splitlines() if line.strip().endswith(".png")]
    assert files and files[0].name.startswith(prefix)
    prompt = json.loads(png_text_chunks((tmp_path / files[0]).read_bytes())["prompt"])
    assert prompt["1"]["inputs"]["color"] == 255


async def test_v2_through_comfy_api_proxy_with_the_comfyui_as_catalog_source(
    api_proxy, comfyui_server: RunningComfyUI, tmp_path: Path
) -> None:
    from prefect_comfy import CatalogUnavailable, ComfyV2Credentials
    from prefect_comfy.job_steps import download_outputs, submit_job
    from prefect_comfy.waiting.waits import wait_for

    prefix = f"v2-{uuid.uuid4().hex[:8]}"
    creds = ComfyV2Credentials(
        endpoint=api_proxy.url, api_key=api_proxy.token, catalog_source=comfyui_server.url
    )
    async with creds.get_backend() as backend:
        job = await submit_job(
            backend, invert(), inputs={"Save.filename_prefix": prefix}, emit_events=False
        )
        event = await wait_for(backend, "job", job.id, timeout=120)
        assert event.event == "job.completed"
        done = await backend.get_job(job.id)
        files = await download_outputs(backend, done, tmp_path)
    assert files and files[0].path is not None and files[0].path.read_bytes()[:4] == b"\x89PNG"

    bare = ComfyV2Credentials(endpoint=api_proxy.url, api_key=api_proxy.token)
    async with bare.get_backend() as backend:
        with pytest.raises(CatalogUnavailable, match="set catalog_source"):
            await submit_job(backend, invert(), emit_events=False)
