"""A new kind of Comfy server is one package: the proof.

The kind is the suite's memory server (:class:`tests.support.memory.MemoryBackend`, a
:class:`ComfyBackend` that nothing in ``prefect_comfy`` knows); this file gives it a Prefect block,
registers it with :func:`prefect_comfy.backends.registry.register`, and runs the Prefect layer on
it under the Prefect test harness: ``run_comfy_workflow`` end to end, a timed-out wait that
cancels, the cancel hook finding a job by the flow run's tag, a saved block loaded by its name, and
the command line's ``--block`` (``run``, ``jobs`` and ``listen``).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.states import Cancelling
from pydantic import Field

from prefect_comfy.backends.registry import load_credentials, register
from prefect_comfy.exceptions import JobTimedOut
from prefect_comfy.orchestration.events import names as events
from prefect_comfy.orchestration.flows import cancel_comfy_job_hook, run_comfy_workflow
from prefect_comfy.orchestration.runs import COMFY_JOB_ID_LABEL
from tests.support.memory import PNG, MemoryBackend, MemoryServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.prefect


# -- the block, registered: the one line that makes it a kind of server --------------------------
@register
class MemoryComfyServer(Block):
    """An in-memory Comfy server, for this test only.

    Example:
        ```python
        server = MemoryComfyServer.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Memory Comfy Server (test)"
    _block_type_slug = "memory-comfy-server-test"

    name: str = Field(default="default", description="Which in-memory server.")

    def get_backend(self) -> MemoryBackend:
        return MemoryBackend(MemoryServer.named(self.name))


# -- the Prefect layer on it ----------------------------------------------------------------------
def graph(class_type: str = "Make") -> dict[str, Any]:
    return {"1": {"class_type": class_type, "inputs": {}}}


async def test_run_comfy_workflow_on_a_new_kind(prefect_api_url, tmp_path) -> None:
    server = MemoryComfyServer(name=f"run-{uuid.uuid4().hex[:8]}")
    state = await asyncio.to_thread(
        run_comfy_workflow,
        server,
        graph(),
        tags=["memory"],
        output_dir=str(tmp_path),
        return_state=True,
    )
    assert state.is_completed(), state
    result = await state.result()
    assert result.status == "completed" and result.tags == ["memory"]
    assert [p.read_bytes() for p in result.paths] == [PNG]
    assert result.paths[0].parent == tmp_path

    flow_run_id = str(state.state_details.flow_run_id)
    job = MemoryServer.named(server.name).jobs[result.job_id]
    assert events.FLOW_RUN_TAG_PREFIX + flow_run_id in job.tags
    async with get_client() as client:
        flow_run = await client.read_flow_run(uuid.UUID(flow_run_id))
    assert flow_run.labels[COMFY_JOB_ID_LABEL] == result.job_id


async def test_a_timed_out_wait_cancels_on_a_new_kind(prefect_api_url) -> None:
    server = MemoryComfyServer(name=f"timeout-{uuid.uuid4().hex[:8]}")
    state = await asyncio.to_thread(
        run_comfy_workflow, server, graph("Hold"), timeout=0.5, return_state=True
    )
    with pytest.raises(JobTimedOut) as info:
        await state.result()
    assert MemoryServer.named(server.name).jobs[info.value.job_id].status == "cancelled"


async def test_the_hook_finds_the_job_by_tag_and_the_block_by_name(prefect_api_url) -> None:
    name = f"hook-{uuid.uuid4().hex[:8]}"
    await MemoryComfyServer(name=name).save(name)
    assert isinstance(await load_credentials(name), MemoryComfyServer)  # a bare name finds the kind

    async with get_client() as client:  # a flow run stopped before its label was set
        flow_run = await client.create_flow_run(
            run_comfy_workflow, parameters={"credentials": name, "workflow": graph("Hold")}
        )
    async with MemoryBackend(MemoryServer.named(name)) as backend:
        job = await backend.submit(
            graph("Hold"), tags=[events.FLOW_RUN_TAG_PREFIX + str(flow_run.id)]
        )
    await eventually(
        lambda: MemoryServer.named(name).jobs[job.id].status == "running",
        timeout=10,
        message="running",
    )
    await cancel_comfy_job_hook(run_comfy_workflow, flow_run, Cancelling())
    assert MemoryServer.named(name).jobs[job.id].status == "cancelled"


def test_the_command_line_on_a_new_kind(prefect_api_url, tmp_path, capsys) -> None:
    """``--block`` takes a saved block of any registered kind: run, then list and read the job."""
    import json as json_module

    from prefect_comfy.cli import main

    name = f"cli-{uuid.uuid4().hex[:8]}"
    MemoryComfyServer(name=name).save(name)  # sync here: a sync test
    workflow = tmp_path / "wf.json"
    workflow.write_text(json_module.dumps(graph()))

    def cli(*argv: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as done:
            main(list(argv))
        out = capsys.readouterr()
        return done.value.code or 0, out.out, out.err

    code, out, err = cli(
        "run", str(workflow), "--no-prefect", "--block", name, "--out", str(tmp_path)
    )
    assert code == 0, err
    saved = Path(out.splitlines()[0])
    assert saved.read_bytes() == PNG
    job_id = next(iter(MemoryServer.named(name).jobs))
    code, out, err = cli("jobs", "list", "--block", name)
    assert code == 0, err
    assert job_id in out and "completed" in out
    code, out, err = cli("jobs", "get", job_id, "--block", name)
    assert code == 0, err
    assert job_id in out


def test_listen_on_a_new_kind(prefect_api_url, capsys) -> None:
    """``listen --block`` on any registered kind: its stream's events become Prefect events.

    The command runs here, in the main thread, as it runs in a terminal; a second thread makes a job
    end on the server once the listener's stream is open, reads the event back from Prefect, then
    presses Ctrl-C (``interrupt_main``), which is how the command stops.
    """
    import _thread
    import threading

    from prefect.events.filters import EventFilter, EventResourceFilter

    from prefect_comfy.cli import main

    name = f"listen-{uuid.uuid4().hex[:8]}"
    MemoryComfyServer(name=name).save(name)
    server = MemoryServer.named(name)
    job = server.add_job(tags=["memory"])
    found: list[Any] = []

    async def stored() -> list[Any]:
        async with get_client() as client:
            page = await client.read_events(
                filter=EventFilter(resource=EventResourceFilter(id=[f"comfy.job.{job.id}"])),
                limit=10,
            )
        return [e for e in page.events if e.event == "comfy.job.completed"]

    async def drive() -> None:
        await eventually(lambda: server.streaming, timeout=60, message="the listener's stream")
        server.finish(job.id)
        found.extend(await eventually(stored, timeout=60, message="the event in Prefect"))

    def in_thread() -> None:
        try:
            asyncio.run(drive())
        finally:
            _thread.interrupt_main()  # Ctrl-C

    driver = threading.Thread(target=in_thread, daemon=True)
    driver.start()
    with pytest.raises(SystemExit) as done:
        main(["listen", "--block", name, "--cursor", "none", "--heartbeat-interval", "0"])
    driver.join()
    err = capsys.readouterr().err
    assert done.value.code in (0, 130), err
    assert found, f"no comfy.job.completed for {job.id} in Prefect; the command said:\n{err}"
    assert found[0].resource["comfy.backend"] == MemoryBackend.kind
    assert found[0].resource["comfy.tag.memory"] == "true"
