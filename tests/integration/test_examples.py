"""The example flows in flows/, against the emulator and a real Prefect server (the harness).

Each example runs with nothing but COMFY_API_KEY, COMFY_BASE_URL and PREFECT_API_URL set.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterId,
)
from prefect.client.schemas.objects import StateType
from prefect.events import DeploymentEventTrigger
from prefect.states import Running

from prefect_comfy.orchestration.triggers import INPUT_READY_PARAMETERS, MODEL_READY_PARAMETERS
from tests.support.keys import API_KEY
from tests.support.listener_prefect import Running as RunningListener
from tests.support.listener_prefect import comfy_http, upload
from tests.support.waiting import eventually, scaled
from tests.support.workflows import failing_workflow

pytestmark = pytest.mark.prefect

FLOWS = Path(__file__).resolve().parents[2] / "flows"


def example_env(emulator: Any, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_")}
    env.update(COMFY_API_KEY=API_KEY, COMFY_BASE_URL=emulator.url, **extra)
    return env


def run_example(script: str, *args: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(FLOWS / script), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert API_KEY not in out
    return done.stdout


@pytest.fixture(scope="module")
def flows_on_path():
    sys.path.insert(0, str(FLOWS))
    yield
    sys.path.remove(str(FLOWS))


def test_scheduled_generation_runs_a_batch(emulator, prefect_api_url, tmp_path):
    stdout = run_example(
        "scheduled_generation.py",
        "--prompt",
        "a red cube",
        "--prompt",
        "a blue sphere",
        env=example_env(emulator),
        cwd=tmp_path,
    )
    lines = [line.split() for line in stdout.splitlines() if line.startswith("job_")]
    assert len(lines) == 2
    for _job_id, status, *files in lines:
        assert status == "completed"
        assert files and all((tmp_path / f).is_file() for f in files)

    async def artifact() -> Any:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["comfy-scheduled-generation"])
                )
            )
        return found

    (latest, *_) = asyncio.run(eventually(artifact, message="the summary artifact"))
    assert "2 of 2 jobs completed" in (latest.description or "")


async def test_scheduled_generation_with_the_tiny_template(
    emulator, prefect_api_url, tmp_path, monkeypatch, flows_on_path
):
    import scheduled_generation as example

    monkeypatch.setenv("COMFY_API_KEY", API_KEY)
    monkeypatch.setenv("COMFY_BASE_URL", emulator.url)
    rows = await example.scheduled_generation(
        variants=[{"1.color": 0xFF0000}, {"1.color": 0x00FF00, "1.width": 32}],
        workflow="empty_image.json",
        output_dir=str(tmp_path),
    )
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert all(Path(f).is_file() for r in rows for f in r["files"])


def test_upload_pipeline_uploads_waits_and_processes(emulator, prefect_api_url, tmp_path):
    stdout = run_example("upload_pipeline.py", env=example_env(emulator), cwd=tmp_path)
    files = [line for line in stdout.splitlines() if line.strip()]
    assert files and all((tmp_path / f).is_file() for f in files)
    assert all("processed" in Path(f).name for f in files)


def test_the_yaml_triggers_spell_the_shipped_templates():
    config = yaml.safe_load((FLOWS / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in config["deployments"]}
    (input_trigger,) = by_name["process-ready-input"]["triggers"]
    (model_trigger,) = by_name["register-ready-model"]["triggers"]
    assert input_trigger["parameters"] == INPUT_READY_PARAMETERS
    assert model_trigger["parameters"] == MODEL_READY_PARAMETERS


async def test_the_yaml_triggers_create_runs(emulator, prefect_api_url, flows_on_path):
    """Each YAML trigger, narrowed to a tag of this test, on a deployment of its own."""
    import serve_triggers

    config = yaml.safe_load((FLOWS / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in config["deployments"]}
    t = f"y{uuid.uuid4().hex[:10]}"
    deployment_ids = {}
    for name, flow_obj in (
        ("process-ready-input", serve_triggers.process_ready_input),
        ("register-ready-model", serve_triggers.register_ready_model),
    ):
        (spec,) = by_name[name]["triggers"]
        spec = {k: v for k, v in spec.items() if k != "type"}
        spec["match"] = {**spec["match"], f"comfy.tag.{t}": "true"}
        spec["match"].pop("comfy.tag.auto")
        deployment = await flow_obj.to_deployment(
            name=f"yaml-{t}", triggers=[DeploymentEventTrigger(**spec)]
        )
        deployment_ids[name] = await deployment.aapply()

    async with RunningListener(emulator, "yaml-test"):
        created_input = await upload(emulator, "input", "yaml.png", [t])
        created_model = await upload(emulator, "model", "yaml.safetensors", [t], type="vae")
        input_run = await one_run(deployment_ids["process-ready-input"])
        model_run = await one_run(deployment_ids["register-ready-model"])
    assert input_run.parameters == {"input_id": created_input["id"], "input_name": "yaml.png"}
    assert model_run.parameters == {
        "model_id": created_model["id"],
        "model_name": "yaml.safetensors",
        "model_type": "vae",
    }


async def one_run(deployment_id: uuid.UUID) -> Any:
    async def probe() -> Any:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
        return runs[0] if runs else None

    return await eventually(probe, timeout=30, interval=0.2, message="a triggered run")


async def test_served_trigger_deployment_runs_to_completion(emulator, prefect_api_url, tmp_path):
    """serve_triggers.py served in a subprocess; an input tagged for it is processed end to end."""
    t = f"s{uuid.uuid4().hex[:10]}"
    env = example_env(
        emulator,
        COMFY_TRIGGER_TAG=t,
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        COMFY_OUTPUT_DIR=str(tmp_path / "outputs"),
    )
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        str(FLOWS / "serve_triggers.py"),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def deployment_id() -> Any:
            async with get_client() as client:
                try:
                    d = await client.read_deployment_by_name(
                        "comfy-process-ready-input/process-ready-input"
                    )
                except Exception:
                    return None
                automations = await client.read_resource_related_automations(
                    f"prefect.deployment.{d.id}"
                )
            ok = any(f"comfy.tag.{t}" in a.trigger.match for a in automations)
            return d.id if ok else None

        dep_id = await eventually(deployment_id, timeout=90, interval=0.5, message="served")
        async with RunningListener(emulator, "serve-test"):
            created = await upload(emulator, "input", f"{t}.png", [t])
            run = await one_run(dep_id)
            assert run.parameters == {"input_id": created["id"], "input_name": f"{t}.png"}

            async def finished() -> Any:
                async with get_client() as client:
                    r = await client.read_flow_run(run.id)
                return r if r.state and r.state.is_final() else None

            final = await eventually(finished, timeout=120, interval=0.5, message="run finished")
        assert final.state.type == StateType.COMPLETED, final.state
        outputs = list((tmp_path / "outputs" / "triggered").rglob("*.png"))
        assert outputs
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), scaled(30))


async def test_failure_automation_fails_the_submitting_flow_run(
    emulator, prefect_api_url, flows_on_path
):
    import failure_automation as example
    from prefect import flow

    @flow(name="comfy-fire-and-forget")
    def fire_and_forget() -> None:
        pass

    t = f"f{uuid.uuid4().hex[:10]}"
    automation = await example.create_failure_automation(name=f"fail-{t}", tags=[t])
    assert automation.id is not None
    async with get_client() as client:
        flow_run = await client.create_flow_run(fire_and_forget, state=Running())

    async with RunningListener(emulator, "failure-test"):
        async with comfy_http(emulator) as http:
            response = await http.post(
                "/jobs",
                json={
                    "workflow": failing_workflow("out of memory", code="oom"),
                    "tags": [t, f"prefect.flow-run.{flow_run.id}"],
                },
            )
            assert response.status_code == 202, response.text

        async def failed() -> Any:
            async with get_client() as client:
                r = await client.read_flow_run(flow_run.id)
            return r if r.state and r.state.type == StateType.FAILED else None

        final = await eventually(failed, timeout=30, interval=0.3, message="flow run failed")
    assert "Comfy job" in (final.state.message or "")


async def test_failure_automation_holds_for_a_flow_still_running(
    emulator, prefect_api_url, flows_on_path
):
    # The case the example's docs describe, with the flow still running when its job fails: the
    # automation fails the run, then the flow returns; its on_completion hook keeps it FAILED
    # (without it, Prefect's final COMPLETED replaces the automation's FAILED: checked by hand).
    import failure_automation as example
    from prefect import flow
    from prefect.context import FlowRunContext

    from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
    from prefect_comfy.orchestration.tasks import submit_comfy_job
    from tests.support.waiting import eventually_sync

    t = f"r{uuid.uuid4().hex[:10]}"
    await example.create_failure_automation(name=f"fail-{t}", tags=[t])
    creds = ComfyCloudCredentials(api_key=API_KEY, base_url=emulator.url)

    def own_state_failed() -> bool:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(FlowRunContext.get().flow_run.id)
        return bool(run.state and run.state.is_failed())

    @flow(name="comfy-fire-and-forget-running", on_completion=[example.keep_comfy_failure])
    def fire_and_forget() -> str:
        job = submit_comfy_job.submit(
            creds, failing_workflow("out of memory", code="oom"), tags=[t]
        ).result()
        eventually_sync(own_state_failed, timeout=45, message="the automation failing this run")
        return job.id

    async with RunningListener(emulator, "failure-running-test"):
        state = await asyncio.to_thread(fire_and_forget, return_state=True)
    flow_run_id = state.state_details.flow_run_id

    async def final_failed() -> Any:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
        return run.state if run.state and run.state.is_failed() and run.end_time else None

    final = await eventually(final_failed, timeout=30, interval=0.3, message="run ends FAILED")
    assert final.message == example.FAILURE_MESSAGE
