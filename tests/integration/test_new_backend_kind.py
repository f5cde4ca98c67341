"""A new kind of Comfy server is one package: the proof, in this one file.

It defines a tiny in-memory server kind (a :class:`ComfyBackend` and its Prefect block), registers
it with :func:`prefect_comfy.backends.registry.register`, and runs the Prefect layer on it under
the Prefect test harness: ``run_comfy_workflow`` end to end, a timed-out wait that cancels, the
cancel hook finding a job by the flow run's tag, and a saved block loaded by its name. Nothing
outside this file knows the kind exists.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.states import Cancelling
from pydantic import Field

from prefect_comfy.backends.base import Capabilities, ComfyBackend, Recent
from prefect_comfy.backends.registry import load_credentials, register
from prefect_comfy.exceptions import ComfyConfigError, JobTimedOut, NotFound
from prefect_comfy.models import ComfyEvent, Job, Output
from prefect_comfy.orchestration.events import names as events
from prefect_comfy.orchestration.flows import cancel_comfy_job_hook, run_comfy_workflow
from prefect_comfy.orchestration.runs import COMFY_JOB_ID_LABEL
from tests.support.waiting import eventually

pytestmark = pytest.mark.prefect

PNG = b"\x89PNG\r\n\x1a\nin-memory"


# -- the server: jobs in a dict, events to every subscriber (any thread, any loop) -----------------
class MemoryServer:
    """Runs a graph in a few timer ticks; a ``Hold`` node keeps it running until cancelled."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self.subscribers: list[Callable[[ComfyEvent], None]] = []
        self.ids = itertools.count(1)

    def publish(self, job: Job, name: str, **payload: Any) -> None:
        event = ComfyEvent(
            event=name, payload={"id": job.id, "status": job.status, "tags": job.tags, **payload}
        )
        with self.lock:
            subscribers = list(self.subscribers)
        for deliver in subscribers:
            deliver(event)

    def submit(self, graph: dict[str, Any], tags: Sequence[str]) -> Job:
        job = Job(id=f"mem_{next(self.ids)}", status="pending", tags=list(tags))
        with self.lock:
            self.jobs[job.id] = job
        hold = any(node["class_type"] == "Hold" for node in graph.values())
        threading.Timer(0.05, self._run, (job.id, hold)).start()
        return job

    def _set(self, job_id: str, **update: Any) -> Job | None:
        with self.lock:
            job = self.jobs[job_id]
            if job.is_terminal:
                return None
            job = self.jobs[job_id] = job.model_copy(update=update)
        return job

    def _run(self, job_id: str, hold: bool) -> None:
        job = self._set(job_id, status="running")
        if job is None:
            return
        self.publish(job, "job.progress", progress=50.0)
        if not hold:
            output = Output(id=f"{job_id}_out", name=f"{job_id}.png", type="image")
            job = self._set(job_id, status="completed", outputs=[output])
            if job is not None:
                self.publish(job, "job.completed")

    def cancel(self, job_id: str) -> Job:
        job = self._set(job_id, status="cancelled")
        if job is None:
            return self.jobs[job_id]
        self.publish(job, "job.cancelled")
        return job


SERVERS: dict[str, MemoryServer] = {}


# -- the backend --------------------------------------------------------------------------------
class MemoryBackend(ComfyBackend):
    kind: ClassVar[str] = "memory"
    capabilities: ClassVar[Capabilities] = Capabilities(find_jobs_by_tag=True)

    def __init__(self, name: str) -> None:
        self.name = name
        self.server = SERVERS.setdefault(name, MemoryServer())

    @property
    def address(self) -> str:
        return f"memory://{self.name}"

    @property
    def connection_key(self) -> str:
        return self.address

    def clone(self) -> MemoryBackend:
        return MemoryBackend(self.name)

    async def submit(self, workflow, *, tags=(), idempotency_key=None) -> Job:
        return self.server.submit(workflow, tags)

    async def get_job(self, job_id: str) -> Job:
        try:
            return self.server.jobs[job_id]
        except KeyError:
            raise NotFound(f"no job {job_id}", status_code=404) from None

    async def cancel(self, job_id: str) -> Job:
        await self.get_job(job_id)
        return self.server.cancel(job_id)

    async def unfinished_jobs(self, tag: str | None = None) -> list[Job] | None:
        return [
            j
            for j in self.server.jobs.values()
            if (tag is None or tag in j.tags) and not j.is_terminal
        ]

    async def recent(self, since, *, limit, kinds=("job", "input", "model")) -> list[Recent]:
        jobs = list(self.server.jobs.values())[::-1][:limit] if "job" in kinds else []
        return [Recent("job", job) for job in jobs]

    async def outputs(self, job_id: str) -> list[Output]:
        return (await self.get_job(job_id)).outputs

    async def download(self, output: Output, dest) -> Path:
        path = Path(dest) / (output.name or output.id) if Path(dest).is_dir() else Path(dest)
        path.write_bytes(PNG)
        return path

    async def upload_input(self, source, *, name=None, tags=(), idempotency_key=None):
        raise ComfyConfigError("the memory server takes no inputs")

    async def upload_model(self, source, *, type, name=None, tags=(), idempotency_key=None):
        raise ComfyConfigError("the memory server takes no models")

    async def get_input(self, input_id):
        raise NotFound(f"no input {input_id}", status_code=404)

    async def get_model(self, model_id):
        raise NotFound(f"no model {model_id}", status_code=404)

    async def events(
        self, patterns=("*",), *, on_connect=None, on_disconnect=None, forever=False
    ) -> AsyncIterator[ComfyEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ComfyEvent] = asyncio.Queue()

        def deliver(event: ComfyEvent) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        with self.server.lock:
            self.server.subscribers.append(deliver)
        try:
            if on_connect is not None:
                await on_connect()
            while True:
                yield await queue.get()
        finally:
            with self.server.lock:
                self.server.subscribers.remove(deliver)


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
        return MemoryBackend(self.name)


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
    job = SERVERS[server.name].jobs[result.job_id]
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
    assert SERVERS[server.name].jobs[info.value.job_id].status == "cancelled"


async def test_the_hook_finds_the_job_by_tag_and_the_block_by_name(prefect_api_url) -> None:
    name = f"hook-{uuid.uuid4().hex[:8]}"
    await MemoryComfyServer(name=name).save(name)
    assert isinstance(await load_credentials(name), MemoryComfyServer)  # a bare name finds the kind

    async with get_client() as client:  # a flow run stopped before its label was set
        flow_run = await client.create_flow_run(
            run_comfy_workflow, parameters={"credentials": name, "workflow": graph("Hold")}
        )
    async with MemoryBackend(name) as backend:
        job = await backend.submit(
            graph("Hold"), tags=[events.FLOW_RUN_TAG_PREFIX + str(flow_run.id)]
        )
    await eventually(
        lambda: SERVERS[name].jobs[job.id].status == "running", timeout=10, message="running"
    )
    await cancel_comfy_job_hook(run_comfy_workflow, flow_run, Cancelling())
    assert SERVERS[name].jobs[job.id].status == "cancelled"


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
    job_id = next(iter(SERVERS[name].jobs))
    code, out, err = cli("jobs", "list", "--block", name)
    assert code == 0, err
    assert job_id in out and "completed" in out
    code, out, err = cli("jobs", "get", job_id, "--block", name)
    assert code == 0, err
    assert job_id in out
