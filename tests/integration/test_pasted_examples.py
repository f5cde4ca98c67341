"""The trigger examples of README.md and docs/triggers.md, pasted into a file and run as
``python file.py`` (a real ``serve``, not the in-process stand-in of ``test_docs.py``).

A served deployment runs each triggered flow in a child process that imports the script again:
without an ``if __name__ == "__main__":`` guard that child serves again instead of running the
flow, and the run stays "Submitting" for ever. Each test serves the example against the Prefect
test harness, sends the ``comfy.input.ready`` event the example's trigger waits for, and waits for
the triggered run to complete.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from prefect_comfy.models import ComfyEvent
from tests.support.markdown import ROOT, Block, python_blocks
from tests.support.triggers import runs_of, send, trigger_is_live
from tests.support.waiting import eventually, scaled

pytestmark = pytest.mark.prefect


ADDRESS = "http://pasted-examples.invalid"


def example(path: Path, needle: str) -> Block:
    """The first Python block of ``path`` that contains ``needle``."""
    return next(b for b in python_blocks(path) if needle in b.source)


EXAMPLES = [
    pytest.param(example(ROOT / "README.md", ".serve("), "process/process", id="README"),
    pytest.param(
        example(ROOT / "docs" / "triggers.md", ".serve("), "process/on-input", id="triggers.md"
    ),
]


@pytest.mark.parametrize(("block", "deployment_name"), EXAMPLES)
async def test_pasted_trigger_example_runs_its_triggered_flow(
    block, deployment_name, prefect_api_url, tmp_path
):
    script = tmp_path / "example.py"
    script.write_text(block.source, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_")}
    env.update(PREFECT_API_URL=prefect_api_url, PREFECT_RUNNER_POLL_FREQUENCY="1")
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        server = await asyncio.create_subprocess_exec(
            sys.executable, str(script), env=env, cwd=tmp_path, stdout=sink, stderr=sink
        )
    deployment_id = None
    try:

        async def served() -> Any:
            async with get_client() as client:
                try:
                    found = await client.read_deployment_by_name(deployment_name)
                except Exception:
                    return None
                automations = await client.read_resource_related_automations(
                    f"prefect.deployment.{found.id}"
                )
            return found.id if automations else None

        deployment_id = await eventually(served, timeout=90, interval=0.5, message="served")
        await trigger_is_live(
            deployment_id,
            lambda pid: ComfyEvent(
                event="input.ready", payload={"id": pid, "name": f"{pid}.png", "tags": ["auto"]}
            ),
            address=ADDRESS,
        )
        name = f"{uuid.uuid4().hex[:8]}.png"
        await send(
            ComfyEvent(
                event="input.ready",
                payload={
                    "id": f"inp_{name[:8]}",
                    "name": name,
                    "status": "ready",
                    "tags": ["auto"],
                },
            ),
            address=ADDRESS,
        )
        runs = await runs_of(deployment_id)
        run = next(r for r in runs if r.parameters.get("input_name") == name)

        async def finished() -> Any:
            async with get_client() as client:
                r = await client.read_flow_run(run.id)
            return r if r.state and r.state.is_final() else None

        try:
            final = await eventually(finished, timeout=120, interval=0.5, message="run finished")
        except Exception as exc:
            raise AssertionError(f"{exc}\nserve said:\n{log.read_text()[-3000:]}") from exc
        assert final.state.type == StateType.COMPLETED, final.state
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), scaled(30))
        if deployment_id is not None:  # its automation goes with it: no later event triggers it
            async with get_client() as client:
                await client.delete_deployment(deployment_id)
