"""The listener between the emulator and a real Prefect server (the test harness).

Inputs, models and jobs are created on the emulator with raw httpx (not through the project's tasks),
so that the listener is the only thing that tells Prefect about them.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.events.filters import (
    EventFilter,
    EventIDFilter,
    EventNameFilter,
    EventResourceFilter,
)

from prefect_comfy.listener.forwarder import ComfyListener
from prefect_comfy.orchestration.triggers import on_input_ready, on_model_ready
from tests.support.keys import API_KEY
from tests.support.listener_prefect import Running, apply, comfy_http, upload
from tests.support.triggers import runs_of
from tests.support.waiting import eventually, scaled
from tests.support.workflows import slow_workflow, tiny_workflow

pytestmark = pytest.mark.prefect


@flow
def on_input(input_id: str, input_name: str | None = None) -> str:
    return input_id


@flow
def on_model(model_id: str, model_name: str | None = None, model_type: str | None = None) -> str:
    return model_id


# -- helpers ----------------------------------------------------------------------------------------
def tag() -> str:
    return f"l{uuid.uuid4().hex[:10]}"


async def stored_events(name: str, resource_id: str) -> list[Any]:
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(
                event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[resource_id])
            ),
            limit=50,
        )
    return page.events


async def wait_stored(name: str, resource_id: str, timeout: float = 30.0) -> list[Any]:
    return await eventually(
        lambda: stored_events(name, resource_id),
        timeout=timeout,
        interval=0.25,
        message=f"{name} for {resource_id} in Prefect",
    )


@pytest.fixture
async def listener(emulator, prefect_api_url) -> AsyncIterator[ComfyListener]:
    async with Running(emulator, "itest") as running:
        yield running


# -- end to end ---------------------------------------------------------------------------------------
async def test_input_ready_runs_the_triggered_deployment_once(emulator, listener):
    t = tag()
    deployment_id = await apply(on_input, on_input_ready(tags=[t]), "input.ready", t)
    created = await upload(emulator, "input", "portrait.png", [t])

    (run,) = await runs_of(deployment_id, 1)
    assert run.parameters == {"input_id": created["id"], "input_name": "portrait.png"}
    stored = await wait_stored("comfy.input.ready", f"comfy.input.{created['id']}")
    assert len(stored) == 1
    assert stored[0].resource[f"comfy.tag.{t}"] == "true"

    # A second input is the marker: once its run exists, the first event had every chance to
    # create a second run, and did not.
    marker = await upload(emulator, "input", "marker.png", [t])
    runs = await runs_of(deployment_id, 2)
    assert sorted(r.parameters["input_id"] for r in runs) == sorted([created["id"], marker["id"]])


async def test_model_ready_runs_the_triggered_deployment_once(emulator, listener):
    t = tag()
    deployment_id = await apply(on_model, on_model_ready(tags=[t]), "model.ready", t)
    created = await upload(emulator, "model", "style.safetensors", [t], type="lora")

    (run,) = await runs_of(deployment_id, 1)
    assert run.parameters == {
        "model_id": created["id"],
        "model_name": "style.safetensors",
        "model_type": "lora",
    }
    marker = await upload(emulator, "model", "marker.safetensors", [t], type="lora")
    runs = await runs_of(deployment_id, 2)
    assert sorted(r.parameters["model_id"] for r in runs) == sorted([created["id"], marker["id"]])


async def test_job_events_are_related_to_the_submitting_flow_run(emulator, listener):
    flow_run_id = str(uuid.uuid4())
    async with comfy_http(emulator) as http:
        response = await http.post(
            "/jobs",
            json={
                # Long enough for progress to be sent: a job that ends within milliseconds has
                # its progress coalesced into its outcome.
                "workflow": slow_workflow(10, step_seconds=0.05),
                "tags": ["rel", f"prefect.flow-run.{flow_run_id}"],
            },
        )
    job_id = response.json()["id"]
    (completed,) = await wait_stored("comfy.job.completed", f"comfy.job.{job_id}")
    # the submitting flow run, and nothing else but where the job stood (shown on the UI's cards)
    assert [r.id for r in completed.related if r.role != "comfy-progress"] == [
        f"prefect.flow-run.{flow_run_id}"
    ]
    assert [r.id for r in completed.related if r.role == "comfy-progress"] == [
        "comfy.progress.completed · 100%"
    ]
    assert completed.resource["comfy.tag.rel"] == "true"
    # Progress payloads carry no tags: the listener read the job once to relate them too.
    progress = await wait_stored("comfy.job.progress", f"comfy.job.{job_id}")
    assert all(e.related[0].id == f"prefect.flow-run.{flow_run_id}" for e in progress)


# -- surviving a dropped connection ----------------------------------------------------------------
async def test_a_job_that_finishes_while_disconnected_is_reconciled(emulator, listener):
    async with comfy_http(emulator) as http:
        response = await http.post(
            "/jobs", json={"workflow": slow_workflow(10, step_seconds=0.05), "tags": ["recon"]}
        )
        job_id = response.json()["id"]
        # The listener must have seen the job in flight before it goes deaf.
        await eventually(lambda: ("job", job_id) in listener._in_flight, message="job in flight")
        emulator.pause_events()
        reconciled_before = listener.stats.reconciled

        async def finished() -> bool:
            return (await http.get(f"/jobs/{job_id}")).json()["status"] == "completed"

        await eventually(finished, timeout=20, interval=0.05, message="job completed")
    # The completion event is held by the pause, then lost with the connection.
    emulator.drop_connections()
    emulator.resume_events()

    (event,) = await wait_stored("comfy.job.completed", f"comfy.job.{job_id}")
    assert listener.stats.reconciled > reconciled_before
    assert listener.stats.connects >= 2
    assert event.payload["status"] == "completed"
    assert event.payload["outputs"], "the reconciled event carries the job's outputs"


# -- two listeners ---------------------------------------------------------------------------------
async def test_two_listeners_create_one_flow_run_per_event(emulator, prefect_api_url):
    t = tag()
    deployment_id = await apply(on_input, on_input_ready(tags=[t]), "input.ready", t)
    async with Running(emulator, "twin-a") as a, Running(emulator, "twin-b") as b:
        created = [await upload(emulator, "input", f"twin-{i}.png", [t]) for i in range(3)]
        ids = {c["id"] for c in created}

        def both_forwarded() -> bool:
            return a.stats.forwarded >= 3 and b.stats.forwarded >= 3

        await eventually(both_forwarded, message="both listeners forwarded the inputs")
        await runs_of(deployment_id, 3)
        marker = await upload(emulator, "input", "twin-marker.png", [t])
        runs = await runs_of(deployment_id, 4)
    assert sorted(r.parameters["input_id"] for r in runs) == sorted([*ids, marker["id"]])


# -- the command line ------------------------------------------------------------------------------
def listen_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from prefect_comfy.cli import main; main()", "listen", *args]


def subprocess_env(emulator: Any, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(COMFY_API_KEY=API_KEY, COMFY_BASE_URL=emulator.url, **extra)
    return env


async def test_sigterm_during_a_burst_loses_nothing_it_received(emulator, prefect_api_url):
    process = await asyncio.create_subprocess_exec(
        *listen_command("--name", "sigterm", "--heartbeat-interval", "0", "--log-level", "DEBUG"),
        env=subprocess_env(emulator),
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []

    async def read_stderr() -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            lines.append(raw.decode(errors="replace"))

    reader = asyncio.create_task(read_stderr())
    try:
        await eventually(
            lambda: any("event stream connected" in line for line in lines),
            timeout=60,
            message="the listener connected",
        )

        async def burst() -> None:
            async with comfy_http(emulator) as http:
                for i in range(30):
                    await http.post(
                        "/jobs", json={"workflow": tiny_workflow(f"burst{i}"), "tags": ["burst"]}
                    )

        bursting = asyncio.create_task(burst())
        await eventually(
            lambda: sum("forwarded comfy." in line for line in lines) >= 20,
            timeout=30,
            message="the burst under way",
        )
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), scaled(60))
        await bursting
        await reader
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    text = "".join(lines)
    assert code == 0, text[-3000:]
    assert API_KEY not in text
    summary = re.search(
        r"received=(\d+) reconciled=(\d+) forwarded=(\d+) connects=\d+ coalesced=(\d+)", text
    )
    assert summary, text[-3000:]
    received, reconciled, forwarded, coalesced = map(int, summary.groups())
    ids = re.findall(r"forwarded comfy\.\S+ \S+ id=([0-9a-f-]{36})", text)
    assert received > 0
    # Every event received was sent, or coalesced into a newer progress event or its job's outcome.
    assert forwarded + coalesced == received + reconciled
    assert forwarded == len(ids)

    async def all_stored() -> bool:
        found: set[str] = set()
        async with get_client() as client:
            for start in range(0, len(ids), 50):
                chunk = ids[start : start + 50]
                page = await client.read_events(
                    filter=EventFilter(id=EventIDFilter(id=[uuid.UUID(i) for i in chunk])),
                    limit=50,
                )
                found.update(str(e.id) for e in page.events)
        return found >= set(ids)

    await eventually(all_stored, timeout=30, interval=0.5, message="every forwarded event stored")


def test_refuses_to_start_without_a_prefect_api_url(emulator):
    env = subprocess_env(emulator, PREFECT_HOME=tempfile.mkdtemp(prefix="no-api-url-"))
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        listen_command(), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert "prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api" in done.stderr
    assert "prefect server start" in done.stderr
    assert API_KEY not in done.stderr + done.stdout
