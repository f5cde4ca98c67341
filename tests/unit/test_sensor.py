"""The sensor's logic on the memory server, through the real waiting layer: outcomes, errors,
cancel on time-out, logs."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from prefect_comfy.exceptions import (
    ComfyConfigError,
    JobCancelled,
    JobFailed,
    JobTimedOut,
    UploadFailed,
)
from prefect_comfy.models import ComfyEvent, Job, Output, ResourceError
from prefect_comfy.orchestration.events import emitter as emitter_module
from prefect_comfy.orchestration.sensor import _JobWatch, watch_comfy_job
from prefect_comfy.orchestration.sensor import watch_comfy_upload as _watch_upload
from prefect_comfy.orchestration.writes import flush_artifact_writes
from tests.support.memory import MemoryBackend
from tests.support.waiting import eventually, scaled


def memory(status: str = "running", job_id: str = "j1") -> MemoryBackend:
    """A memory server holding one job, and a backend on it."""
    backend = MemoryBackend()
    backend.server.add_job(job_id, status)
    return backend


async def watching(credentials: Any, backend: MemoryBackend, **kwargs: Any) -> asyncio.Task[Job]:
    """``watch_comfy_job`` on j1 as a task, once it follows the job (the server may then talk)."""
    task = asyncio.ensure_future(watch_comfy_job(credentials, "j1", **kwargs))
    await backend.server.followed("j1")
    return task


class Creds:
    def __init__(self, backend):
        self.backend = backend

    async def get_backend(self):  # an async get_backend works too
        return self.backend


@pytest.fixture
def sent(monkeypatch):
    events: list = []
    monkeypatch.setattr(emitter_module, "prefect_event_sink", events.append)
    return events


QUIET = {"progress_artifact": False, "outputs_artifact": False}


async def test_completed_returns_the_job_read_again(sent, caplog):
    caplog.set_level(logging.INFO, logger="prefect_comfy")
    backend = memory()
    task = await watching(Creds(backend), backend, progress_interval=10, **QUIET)
    for value in (10, 50, 100):
        backend.server.progress("j1", value)
    backend.server.finish("j1", "completed", outputs=[Output(id="o1", name="a.png")])
    result = await asyncio.wait_for(task, scaled(10))
    assert result == backend.server.jobs["j1"] and result.status == "completed"
    assert backend.closed  # made from the credentials: closed here
    assert [(e.event, e.payload.get("progress")) for e in sent] == [
        ("comfy.job.progress", 10),
        ("comfy.job.completed", 100),  # coalesced; the outcome says 100 %, no progress before it
    ]
    assert sent[-1].payload["outputs"][0]["name"] == "a.png"
    lines = [r.getMessage() for r in caplog.records if "j1" in r.getMessage()]
    assert lines == [
        "Waiting for Comfy job j1",
        "Comfy job j1: 0%",
        "Comfy job j1 is running",
        "Comfy job j1: 10%",  # every tenth reached, each once: 50 % is the tenth reached after 10
        "Comfy job j1: 50%",
        "Comfy job j1: 100%",
        "Comfy job j1 completed with 1 output(s)",
    ]


def test_milestones_are_logged_once_each_in_order(caplog) -> None:
    caplog.set_level(logging.INFO, logger="test")
    watch = _JobWatch("j1", None, None, logging.getLogger("test"))
    for progress, where in [
        (0, None),
        (3, None),
        (12, "KSampler step 1/8"),
        (19, None),
        (45, None),
        (40, None),
        (99.9, None),
        (100, None),
        (100, None),
        (130, None),
    ]:
        watch.note_milestone(progress, where)
    assert [r.getMessage() for r in caplog.records] == [
        "Comfy job j1: 0%",
        "Comfy job j1: 10% · KSampler step 1/8",
        "Comfy job j1: 40%",
        "Comfy job j1: 90%",
        "Comfy job j1: 100%",
    ]


async def test_failed_raises_job_failed_with_the_comfy_error(sent):
    backend = memory()
    task = await watching(backend, backend, **QUIET)
    backend.server.finish(
        "j1", "failed", error={"code": "oom", "message": "out of memory", "node_id": "3"}
    )
    with pytest.raises(JobFailed) as info:
        await asyncio.wait_for(task, scaled(10))
    assert (info.value.error_code, info.value.error_message, info.value.node_id) == (
        "oom",
        "out of memory",
        "3",
    )
    assert not backend.closed  # given directly: the caller's to close
    assert sent[-1].payload["error"] == {"code": "oom", "message": "out of memory", "node_id": "3"}


async def test_cancelled_raises_job_cancelled(sent):
    backend = memory()
    task = await watching(backend, backend, **QUIET)
    backend.server.finish("j1", "cancelled")
    with pytest.raises(JobCancelled):
        await asyncio.wait_for(task, scaled(10))
    assert sent[-1].event == "comfy.job.cancelled"


async def test_lost_raises_job_lost_and_is_retryable(sent):
    """Issue 11 item 7: a job the server lost is neither a cancel nor a plain failure."""
    from prefect_comfy.exceptions import JobLost, is_retryable

    backend = memory()
    task = await watching(backend, backend, **QUIET)
    del backend.server.jobs["j1"]  # the server restarted and forgot it
    backend.server.drop()
    with pytest.raises(JobLost) as caught:
        await asyncio.wait_for(task, scaled(10))
    assert not isinstance(caught.value, JobCancelled) and is_retryable(caught.value)
    assert "no such job" in str(caught.value) and caught.value.status == "lost"
    assert sent[-1].event == "comfy.job.lost"
    assert sent[-1].resource["comfy.status"] == "lost"


@pytest.mark.parametrize("cancel", [True, False])
async def test_timeout_emits_timed_out_and_cancels(sent, cancel):
    backend = memory()
    timeout = scaled(1.0)
    task = await watching(backend, backend, timeout=timeout, cancel_on_timeout=cancel, **QUIET)
    backend.server.progress("j1", 5)
    with pytest.raises(JobTimedOut):
        await asyncio.wait_for(task, scaled(10))
    assert [e.event for e in sent] == ["comfy.job.progress", "comfy.job.timed-out"]
    assert sent[-1].payload == {
        "id": "j1",
        "timeout": timeout,
        "last_status": "running",
        "status": "running",
        "progress": 5,  # where the job stood, taken over from the last progress
    }
    assert backend.server.cancels == (["j1"] if cancel else [])


async def test_no_events_when_disabled(sent):
    backend = memory()
    task = await watching(backend, backend, emit_events=False, **QUIET)
    backend.server.progress("j1", 1)
    backend.server.finish("j1", "completed")
    await asyncio.wait_for(task, scaled(10))
    assert sent == []


async def test_not_a_backend():
    with pytest.raises(ComfyConfigError):
        await watch_comfy_job(object(), "j1", **QUIET)


@pytest.mark.parametrize("kind", ["input", "model"])
async def test_upload_failed_raises(sent, kind):
    backend = MemoryBackend()
    add = backend.server.add_input if kind == "input" else backend.server.add_model
    add("u1", "failed", name="a.png", error=ResourceError(code="bad", message="nope"))
    with pytest.raises(UploadFailed) as info:
        await _watch_upload(backend, kind, "u1", None, True)
    assert (info.value.kind, info.value.error_code, info.value.error_message) == (
        kind,
        "bad",
        "nope",
    )
    assert sent[-1].event == f"comfy.{kind}.failed"
    assert sent[-1].payload["error"]["code"] == "bad"


async def test_interrupted_wait_cancels_the_job_and_closes_the_backend(sent):
    backend = memory()
    waiting = await watching(Creds(backend), backend, **QUIET)
    backend.server.progress("j1", 5)
    await eventually(lambda: sent, message="the first progress event")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await eventually(lambda: backend.closed, message="the backend closed")
    assert backend.server.cancels == ["j1"]


class HeldEmitter:
    """An emitter that always holds a progress update due later: the pump waits with a time-out."""

    def __init__(self) -> None:
        self.asked = 0
        self.flushed: list[str | None] = []

    def next_due(self) -> float:
        self.asked += 1
        return 30.0

    def progress(self, event: ComfyEvent) -> bool:
        return False

    def flush_due(self) -> int:
        return 0

    def flush(self, job_id: str | None = None) -> int:
        self.flushed.append(job_id)
        return 0


async def test_stopping_right_after_a_progress_event_ends_the_pump():
    # A progress event wakes the pump in the same loop turn as stop() cancels it. On Python 3.11,
    # asyncio.wait_for returns the finished inner result and drops that cancellation: stop() then
    # awaited the pump for ever, and the task run's thread with it (the flow run hung).
    emitter = HeldEmitter()
    watch = _JobWatch("j1", emitter, None, logging.getLogger("test"))  # type: ignore[arg-type]
    watch.start()
    await eventually(lambda: emitter.asked, message="the pump waiting")
    watch.on_progress(ComfyEvent(event="job.progress", payload={"id": "j1", "progress": 5}))
    stopping = asyncio.ensure_future(watch.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)
    if not done:
        stopping.cancel()
    assert done, "stop() did not end the pump"
    assert emitter.flushed == ["j1"]


# -- a Prefect API that fails or hangs artifact writes (issue 11, item 15) --------------------------
class StubbornWrites:
    """Artifact writes that hang and ignore the first cancellation, as a client stuck in retries."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls: list[str] = []

    def hang(self, name: str):
        async def write(**kwargs: Any):
            self.calls.append(name)
            try:
                await asyncio.wait_for(self.release.wait(), scaled(3600))
            except asyncio.CancelledError:
                await self.release.wait()  # deaf to the cancellation until the test lets go
            raise RuntimeError("released")

        return write


@pytest.fixture
def quick_bounds(monkeypatch):
    from prefect_comfy.orchestration import artifacts
    from prefect_comfy.orchestration import sensor as watching

    monkeypatch.setattr(artifacts, "ARTIFACT_WRITE_TIMEOUT", 0.2)
    monkeypatch.setattr(artifacts, "OUTPUTS_ARTIFACT_TIMEOUT", 0.2)
    monkeypatch.setattr(watching, "STOP_TIMEOUT", 0.5)


@pytest.mark.parametrize("where", ["create", "update", "outputs", "all"])
async def test_hanging_artifact_writes_never_keep_the_wait_from_returning(
    sent, monkeypatch, quick_bounds, caplog, where
):
    stubborn = StubbornWrites()
    real: dict[str, Any] = {"create": None, "update": None, "outputs": None}

    async def fine(**kwargs: Any):
        return __import__("uuid").uuid4()

    for name, attr in (
        ("create", "acreate_progress_artifact"),
        ("update", "aupdate_progress_artifact"),
        ("outputs", "acreate_markdown_artifact"),
    ):
        real[name] = stubborn.hang(name) if where in (name, "all") else fine
        monkeypatch.setattr(f"prefect.artifacts.{attr}", real[name])
    backend = memory()
    task = await watching(backend, backend, progress_interval=0)
    # Without the bounds, the wait would return only when the writes let go, after 4 s.
    asyncio.get_running_loop().call_later(4.0, stubborn.release.set)
    started = time.monotonic()
    try:
        backend.server.progress("j1", 10)
        backend.server.progress("j1", 50)
        backend.server.finish("j1", "completed", outputs=[Output(id="o1", name="a.txt")])
        result = await asyncio.wait_for(task, scaled(10))
        elapsed = time.monotonic() - started
    finally:
        stubborn.release.set()
    assert result == backend.server.jobs["j1"]
    assert elapsed < 2.0, f"the wait took {elapsed:.1f}s"
    # its final writes went on in the background, each bounded: a task's flush ends them in time
    assert await flush_artifact_writes(timeout=2.0)
    assert stubborn.calls, "a write was tried"
    assert sent[-1].event == "comfy.job.completed"
    assert "not written" in caplog.text


async def test_failing_artifact_writes_never_fail_the_wait(sent, monkeypatch, caplog):
    async def refuse(**kwargs: Any):
        raise RuntimeError("503 from the Prefect API")

    for attr in (
        "acreate_progress_artifact",
        "aupdate_progress_artifact",
        "acreate_markdown_artifact",
    ):
        monkeypatch.setattr(f"prefect.artifacts.{attr}", refuse)
    backend = memory()
    task = await watching(backend, backend)
    backend.server.progress("j1", 10)
    backend.server.finish("j1", "completed", outputs=[Output(id="o1", name="a.txt")])
    assert await asyncio.wait_for(task, scaled(5)) == backend.server.jobs["j1"]
    await flush_artifact_writes(timeout=scaled(5))
    assert "503 from the Prefect API" in caplog.text


async def test_the_final_artifact_writes_are_off_the_waiting_path_and_flushed_later(
    sent, monkeypatch
):
    """Issue 21 §4: the wait returns while its final progress and outputs writes still go on (a
    slow Prefect API once held 200 waits 3x as long); the task's flush then sees them written,
    the progress ending at 100."""
    slow = asyncio.Event()
    writes: list[tuple[str, Any]] = []

    async def create(**kwargs: Any):
        await slow.wait()
        writes.append(("create", kwargs.get("progress", kwargs.get("key"))))
        return __import__("uuid").uuid4()

    async def update(**kwargs: Any):
        await slow.wait()
        writes.append(("update", kwargs["progress"]))

    async def markdown(**kwargs: Any):
        await slow.wait()
        writes.append(("outputs", kwargs["key"]))
        return __import__("uuid").uuid4()

    monkeypatch.setattr("prefect.artifacts.acreate_progress_artifact", create)
    monkeypatch.setattr("prefect.artifacts.aupdate_progress_artifact", update)
    monkeypatch.setattr("prefect.artifacts.acreate_markdown_artifact", markdown)
    backend = memory()
    task = await watching(backend, backend, emit_events=False)
    backend.server.progress("j1", 10)
    backend.server.progress("j1", 50)
    backend.server.finish("j1", "completed", outputs=[Output(id="o1", name="a.txt")])
    assert await asyncio.wait_for(task, scaled(5)) == backend.server.jobs["j1"]
    assert writes == []  # returned while every write still waits for the API
    slow.set()
    assert await flush_artifact_writes(timeout=scaled(5))
    assert ("outputs", "comfy-job-j1-outputs") in writes
    assert ("create", 100.0) in writes or ("update", 100.0) in writes  # the final value
