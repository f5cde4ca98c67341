"""Save format, inputs by name and seeds against the emulator, on both faces (issue 16).

The developer API and v2 have no catalog route: their blocks take a ``catalog_source``, here the
emulator's own address (it serves its nodes at ``/api/object_info``, as a local ComfyUI does) or a
saved file. Every bad input asserts that the emulator received no job.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client

from prefect_comfy.backends.catalog import forget_catalogs
from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
from prefect_comfy.backends.v2.block import ComfyV2Credentials
from prefect_comfy.exceptions import (
    CatalogUnavailable,
    InvalidInputs,
    InvalidWorkflow,
    UnknownNodeType,
)
from prefect_comfy.orchestration.artifacts import artifact_key
from prefect_comfy.orchestration.flows import run_comfy_workflow
from prefect_comfy.orchestration.job_steps import submit_job
from prefect_comfy.orchestration.jobs import ComfyWorkflow
from prefect_comfy.waiting.waits import wait_for
from prefect_comfy_emulator.catalog import object_info
from tests.support.keys import API_KEY
from tests.support.save_workflows import txt2img
from tests.support.waiting import eventually

INPUTS = {"Positive Prompt.text": "a red fox", "KSampler.steps": 3, "4.width": 256}


@pytest.fixture(autouse=True)
def _fresh_catalogs():
    forget_catalogs()
    yield
    forget_catalogs()


def jobs_on(emulator: Any) -> int:
    return sum(emulator.stats()["jobs"].values())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_emulator_serves_its_catalog_in_comfyuis_shape(emulator) -> None:
    for path in ("/object_info", "/api/object_info"):
        body = httpx.get(emulator.url + path).json()
        assert body == json.loads(json.dumps(object_info()))
    assert body["KSampler"]["input"]["required"]["seed"][1]["control_after_generate"] is True


async def submitted_graph(backend: Any, job_id: str) -> dict[str, Any]:
    job = await backend.get_job(job_id)
    return job.workflow or {}


@pytest.mark.parametrize("face", ["developer", "v2"])
async def test_save_format_with_inputs_runs_on_either_face(emulator, face: str) -> None:
    if face == "developer":
        creds: Any = ComfyCloudCredentials(
            api_key=API_KEY, base_url=emulator.url, catalog_source=emulator.url
        )
    else:
        creds = ComfyV2Credentials(
            endpoint=emulator.v2_url, api_key=API_KEY, catalog_source=emulator.url
        )
    async with creds.get_backend() as backend:
        job = await submit_job(backend, txt2img(), inputs=INPUTS, emit_events=False)
        (key,) = job.seeds
        assert key == "5.seed" and job.seeds[key] != 42, "randomize drew a fresh seed"
        event = await wait_for(backend, "job", job.id, timeout=60)
        assert event.event == "job.completed"
        if face == "developer":  # the developer API gives the graph back
            graph = await submitted_graph(backend, job.id)
            assert graph["2"]["inputs"]["text"] == "a red fox"
            assert graph["5"]["inputs"]["steps"] == 3 and graph["4"]["inputs"]["width"] == 256
            assert graph["5"]["inputs"]["seed"] == job.seeds["5.seed"]
            assert "9" not in graph and "8" not in graph, "the Note and the Reroute vanish"


@pytest.mark.parametrize("face", ["developer", "v2"])
async def test_without_a_catalog_source_the_error_says_what_to_set(
    emulator, monkeypatch, face: str
) -> None:
    monkeypatch.delenv("COMFY_CATALOG_SOURCE", raising=False)
    creds: Any = (
        ComfyCloudCredentials(api_key=API_KEY, base_url=emulator.url)
        if face == "developer"
        else ComfyV2Credentials(endpoint=emulator.v2_url, api_key=API_KEY)
    )
    before = jobs_on(emulator)
    async with creds.get_backend() as backend:
        with pytest.raises(CatalogUnavailable) as info:
            await submit_job(backend, txt2img(), emit_events=False)
    message = str(info.value)
    assert "set catalog_source on the credentials block" in message
    assert "COMFY_CATALOG_SOURCE" in message and "Save (API format)" in message
    assert jobs_on(emulator) == before


async def test_an_unreachable_catalog_is_a_clear_error_and_nothing_is_submitted(emulator) -> None:
    source = f"http://127.0.0.1:{closed_port()}"
    creds = ComfyCloudCredentials(api_key=API_KEY, base_url=emulator.url, catalog_source=source)
    before = jobs_on(emulator)
    async with creds.get_backend() as backend:
        with pytest.raises(CatalogUnavailable) as info:
            await submit_job(backend, txt2img(), emit_events=False)
    assert f"Could not read the node catalog at {source}/api/object_info" in str(info.value)
    assert jobs_on(emulator) == before


async def test_a_stale_catalog_file_is_read_again_once_then_the_node_is_named(
    emulator, tmp_path: Path
) -> None:
    info = object_info()
    info["FancyUpscaler"] = info["ImageInvert"]  # a custom node the server had
    catalog_file = tmp_path / "object_info.json"
    catalog_file.write_text(json.dumps(info))
    creds = ComfyCloudCredentials(
        api_key=API_KEY, base_url=emulator.url, catalog_source=str(catalog_file)
    )
    workflow = txt2img()
    workflow["nodes"].append(
        {"id": 20, "type": "FancyUpscaler", "mode": 0, "title": "Upscale",
         "inputs": [{"name": "image", "type": "IMAGE", "link": 30}], "outputs": []}
    )  # fmt: skip
    workflow["nodes"][5]["outputs"][0]["links"].append(30)
    workflow["links"].append([30, 6, 0, 20, 0, "IMAGE"])
    async with creds.get_backend() as backend:
        await backend.node_catalog()  # cached while the server had the node
        del info["FancyUpscaler"]  # then it was removed
        catalog_file.write_text(json.dumps(info))
        before = jobs_on(emulator)
        with pytest.raises(UnknownNodeType) as caught:
            await submit_job(backend, workflow, emit_events=False)
    exc = caught.value
    assert (exc.node_id, exc.title, exc.class_type) == ("20", "Upscale", "FancyUpscaler")
    assert emulator.url in str(exc)
    assert jobs_on(emulator) == before


async def test_a_checkpoint_the_server_lacks_lists_the_ones_it_has(emulator) -> None:
    creds = ComfyCloudCredentials(
        api_key=API_KEY, base_url=emulator.url, catalog_source=emulator.url
    )
    before = jobs_on(emulator)
    async with creds.get_backend() as backend:
        with pytest.raises(InvalidInputs) as info:
            await submit_job(
                backend, txt2img(), inputs={"1.ckpt_name": "nope.ckpt"}, emit_events=False
            )
    assert "'nope.ckpt' is not one of the 4 choices" in str(info.value)
    assert "'v1-5-pruned-emaonly.safetensors'" in str(info.value)
    assert jobs_on(emulator) == before


@pytest.mark.prefect
def test_run_comfy_workflow_records_the_seed_in_result_event_and_artifact(
    emulator, prefect_api_url, tmp_path: Path
) -> None:
    creds = ComfyCloudCredentials(
        api_key=API_KEY, base_url=emulator.url, catalog_source=emulator.url
    )
    result = run_comfy_workflow(creds, txt2img(), inputs=INPUTS, output_dir=str(tmp_path))
    assert result.status == "completed" and result.paths
    seed = result.seeds["5.seed"]
    assert seed != 42

    async def submitted_payload() -> dict[str, Any] | None:
        from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

        async with get_client() as client:
            page = await client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=["comfy.job.submitted"]),
                    resource=EventResourceFilter(id=[f"comfy.job.{result.job_id}"]),
                ),
                limit=5,
            )
        return page.events[0].payload if page.events else None

    import asyncio

    payload = asyncio.run(eventually(submitted_payload, timeout=60))
    assert payload["seeds"] == {"5.seed": seed}

    async def artifact_markdown() -> str | None:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[artifact_key("job", result.job_id, "outputs")])
                )
            )
        texts = [a.data for a in found if isinstance(a.data, str) and "Seeds:" in a.data]
        return texts[0] if texts else None

    markdown = asyncio.run(eventually(artifact_markdown, timeout=60))
    assert f"`5.seed` = {seed}" in markdown

    again = run_comfy_workflow(creds, txt2img(), inputs={**INPUTS, "5.seed": seed})
    assert again.seeds == {"5.seed": seed}, "the recorded seed given back makes the same run"


@pytest.mark.prefect
def test_the_job_block_takes_save_format_and_inputs(emulator, prefect_api_url) -> None:
    creds = ComfyCloudCredentials(
        api_key=API_KEY, base_url=emulator.url, catalog_source=emulator.url
    )
    block = ComfyWorkflow(credentials=creds, workflow=txt2img(), inputs={"KSampler.seed": 11})
    run = block.trigger()
    assert run.seeds == {"5.seed": 11}
    result = run.fetch_result()
    assert result.status == "completed" and result.seeds == {"5.seed": 11}
    bad = ComfyWorkflow(credentials=creds, workflow=txt2img(), inputs={"KSampler.seed": -1})
    before = jobs_on(emulator)
    with pytest.raises(InvalidInputs, match="below the minimum 0"):
        bad.trigger()
    assert jobs_on(emulator) == before


def test_cli_run_and_validate_with_set_on_a_save_format_file(emulator, tmp_path: Path) -> None:
    import os

    path = tmp_path / "txt2img.json"
    path.write_text(json.dumps(txt2img()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_", "PREFECT_API_"))}
    env.update(
        {"COMFY_API_KEY": API_KEY, "COMFY_BASE_URL": emulator.url, "NO_COLOR": "1",
         "COMFY_CATALOG_SOURCE": emulator.url}
    )  # fmt: skip
    cli = [sys.executable, "-m", "prefect_comfy.cli"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*cli, *args], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert API_KEY not in done.stdout + done.stderr
        return done

    done = run(
        "validate", str(path), "--set", "Positive Prompt.text=a fox", "-s", "KSampler.seed=5"
    )
    assert done.returncode == 0, done.stderr
    assert "save-format workflow with 9 nodes" in done.stdout
    assert "Converted to an API-format graph with 7 nodes" in done.stdout
    assert "The server accepts it." in done.stdout

    done = run("run", str(path), "--no-prefect", "--set", "KSampler.seed=5", "-o", "out")
    assert done.returncode == 0, done.stderr
    assert '--set "5.seed=5"' in done.stdout + done.stderr
    assert (tmp_path / "out").is_dir() and list((tmp_path / "out").iterdir())

    before = jobs_on(emulator)
    done = run("run", str(path), "--no-prefect", "--set", "Positive Promt.text=x")
    assert done.returncode == 2 and "did you mean 'Positive Prompt'" in done.stderr
    done = run("run", str(path), "--no-prefect", "--set", "seed")
    assert done.returncode == 2 and "NODE.INPUT=VALUE" in done.stderr
    assert jobs_on(emulator) == before


def _missing_link() -> dict[str, Any]:
    workflow = txt2img()
    workflow["links"].append([40, 99, 0, 6, 1, "VAE"])
    workflow["nodes"][5]["inputs"][1]["link"] = 40
    return workflow


def _cycle() -> dict[str, Any]:
    workflow = txt2img()
    workflow["links"].append([40, 6, 0, 6, 0, "LATENT"])  # VAEDecode fed by itself
    workflow["nodes"][5]["inputs"][0]["link"] = 40
    return workflow


def _bypass_without_match() -> dict[str, Any]:
    workflow = txt2img()
    workflow["nodes"][3]["mode"] = 4  # EmptyLatentImage has no LATENT input to pass through
    return workflow


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (_missing_link, "is linked to node 99, which does not exist"),
        (_cycle, "form a cycle through node 6 (VAEDecode)"),
        (_bypass_without_match, "from bypassed node 4 (EmptyLatentImage), which has no input"),
    ],
)
async def test_a_graph_that_cannot_convert_submits_nothing(emulator, make, needle: str) -> None:
    creds = ComfyCloudCredentials(
        api_key=API_KEY, base_url=emulator.url, catalog_source=emulator.url
    )
    before = jobs_on(emulator)
    async with creds.get_backend() as backend:
        with pytest.raises(InvalidWorkflow) as info:
            await submit_job(backend, make(), emit_events=False)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert jobs_on(emulator) == before


async def test_a_10000_node_graph_is_prepared_in_well_under_a_second_of_cpu(emulator) -> None:
    import time

    from prefect_comfy.orchestration.prepare import prepare_workflow

    count = 10_000
    nodes = [{"id": 1, "type": "EmptyImage", "mode": 0, "widgets_values": [8, 8, 1, 0],
              "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}]}]  # fmt: skip
    links = []
    for i in range(2, count):
        nodes.append(
            {"id": i, "type": "ImageInvert", "mode": 0,
             "inputs": [{"name": "image", "type": "IMAGE", "link": i - 1}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [i]}]}
        )  # fmt: skip
        links.append([i - 1, i - 1, 0, i, 0, "IMAGE"])
    nodes.append({"id": count, "type": "SaveImage", "mode": 0, "widgets_values": ["x"],
                  "inputs": [{"name": "images", "type": "IMAGE", "link": count - 1}]})  # fmt: skip
    links.append([count - 1, count - 1, 0, count, 0, "IMAGE"])
    creds = ComfyCloudCredentials(
        api_key=API_KEY, base_url=emulator.url, catalog_source=emulator.url
    )
    async with creds.get_backend() as backend:
        await backend.node_catalog()
        started = time.process_time()
        prepared = await prepare_workflow(backend, {"nodes": nodes, "links": links})
        spent = time.process_time() - started
    assert len(prepared.graph) == count
    assert spent < 2.0, f"{spent:.2f} s of CPU to prepare {count} nodes"  # measured ~0.3 s idle
