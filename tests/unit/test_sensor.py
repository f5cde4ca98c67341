"""The sensor's logic on a fake backend (no server): outcomes, errors, cancel on time-out, logs."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.exceptions import (
    ComfyConfigError,
    JobCancelled,
    JobFailed,
    JobTimedOut,
    UploadFailed,
)
from prefect_comfy.models import ComfyEvent, Input, Job, Model, Output, ResourceError
from prefect_comfy.orchestration.events import emitter as emitter_module
from prefect_comfy.orchestration.sensor import _JobWatch, watch_comfy_job
from prefect_comfy.orchestration.sensor import watch_comfy_upload as _watch_upload
from prefect_comfy.orchestration.writes import flush_artifact_writes
from tests.support.waiting import eventually, scaled

pytestmark = pytest.mark.usefixtures("scripted_waits")


class FakeBackend(ComfyBackend):
    kind = "cloud"

    def __init__(self, terminal: ComfyEvent | None, job: Job, progress: list[float] = ()) -> None:
        self.terminal = terminal
        self.job = job
        self.progress = list(progress)
        self.cancelled: list[str] = []
        self.closed = False
        self.upload: Input | Model | None = None

    address = "http://fake"  # type: ignore[assignment]
    connection_key = "fake"  # type: ignore[assignment]

    def clone(self):
        return self

    async def wait_for_job(self, job_id, *, timeout=None, on_progress=None):
        for value in self.progress:
            on_progress(
                ComfyEvent(
                    event="job.progress",
                    payload={"id": job_id, "status": "running", "progress": value},
                )
            )
        if self.progress:
            await asyncio.sleep(0.05)  # a job ends some time after its last progress
        if self.terminal is None:
            await asyncio.sleep(0)
            raise JobTimedOut(job_id, timeout=timeout or 0.0, status="running")
        return self.terminal

    async def wait_for_input(self, input_id, *, timeout=None):
        return ComfyEvent(event=f"input.{self.upload.status}", payload={"id": input_id})

    async def wait_for_model(self, model_id, *, timeout=None):
        return ComfyEvent(event=f"model.{self.upload.status}", payload={"id": model_id})

    async def get_job(self, job_id):
        return self.job

    async def cancel(self, job_id):
        self.cancelled.append(job_id)
        return self.job.model_copy(update={"status": "cancelled"})

    async def get_input(self, input_id):
        return self.upload

    get_model = get_input

    async def aclose(self):
        self.closed = True

    async def submit(self, *a: Any, **k: Any): ...
    async def outputs(self, job_id): ...
    async def download(self, output, dest): ...
    async def upload_input(self, *a: Any, **k: Any): ...
    async def upload_model(self, *a: Any, **k: Any): ...
    def events(self, *a: Any, **k: Any): ...


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
    job = Job(id="j1", status="completed", outputs=[Output(id="o1", name="a.png")])
    backend = FakeBackend(
        ComfyEvent(event="job.completed", payload={"id": "j1"}), job, [10, 50, 100]
    )
    result = await watch_comfy_job(Creds(backend), "j1", progress_interval=10, **QUIET)
    assert result is job
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
    error = ResourceError(code="oom", message="out of memory", node_id="3")
    backend = FakeBackend(
        ComfyEvent(event="job.failed", payload={"id": "j1"}),
        Job(id="j1", status="failed", error=error),
    )
    with pytest.raises(JobFailed) as info:
        await watch_comfy_job(backend, "j1", **QUIET)
    assert (info.value.error_code, info.value.error_message, info.value.node_id) == (
        "oom",
        "out of memory",
        "3",
    )
    assert not backend.closed  # given directly: the caller's to close
    assert sent[-1].payload["error"] == {"code": "oom", "message": "out of memory", "node_id": "3"}


async def test_cancelled_raises_job_cancelled(sent):
    backend = FakeBackend(
        ComfyEvent(event="job.cancelled", payload={"id": "j1"}), Job(id="j1", status="cancelled")
    )
    with pytest.raises(JobCancelled):
        await watch_comfy_job(backend, "j1", **QUIET)
    assert sent[-1].event == "comfy.job.cancelled"


async def test_lost_raises_job_lost_and_is_retryable(sent):
    """Issue 11 item 7: a job the server lost is neither a cancel nor a plain failure."""
    from prefect_comfy.exceptions import JobLost, is_retryable

    lost = ComfyEvent(
        event="job.lost",
        payload={"id": "j1", "status": "lost", "error": {"code": "lost", "message": "restarted"}},
    )
    backend = FakeBackend(lost, Job(id="j1", status="running"))
    with pytest.raises(JobLost) as caught:
        await watch_comfy_job(backend, "j1", **QUIET)
    assert not isinstance(caught.value, JobCancelled) and is_retryable(caught.value)
    assert "restarted" in str(caught.value) and caught.value.status == "lost"
    assert sent[-1].event == "comfy.job.lost"
    assert sent[-1].resource["comfy.status"] == "lost"


@pytest.mark.parametrize("cancel", [True, False])
async def test_timeout_emits_timed_out_and_cancels(sent, cancel):
    backend = FakeBackend(None, Job(id="j1", status="running"), [5])
    with pytest.raises(JobTimedOut):
        await watch_comfy_job(backend, "j1", timeout=0.01, cancel_on_timeout=cancel, **QUIET)
    assert [e.event for e in sent] == ["comfy.job.progress", "comfy.job.timed-out"]
    assert sent[-1].payload == {
        "id": "j1",
        "timeout": 0.01,
        "last_status": "running",
        "status": "running",
        "progress": 5,  # where the job stood, taken over from the last progress
    }
    assert backend.cancelled == (["j1"] if cancel else [])


async def test_no_events_when_disabled(sent):
    backend = FakeBackend(
        ComfyEvent(event="job.completed", payload={"id": "j1"}),
        Job(id="j1", status="completed"),
        [1],
    )
    await watch_comfy_job(backend, "j1", emit_events=False, **QUIET)
    assert sent == []


async def test_not_a_backend():
    with pytest.raises(ComfyConfigError):
        await watch_comfy_job(object(), "j1", **QUIET)


@pytest.mark.parametrize("kind", ["input", "model"])
async def test_upload_failed_raises(sent, kind):
    backend = FakeBackend(None, Job(id="x", status="pending"))
    backend.upload = Input(
        id="u1", name="a.png", status="failed", error=ResourceError(code="bad", message="nope")
    )
    with pytest.raises(UploadFailed) as info:
        await _watch_upload(backend, kind, "u1", None, True)
    assert (info.value.kind, info.value.error_code, info.value.error_message) == (
        kind,
        "bad",
        "nope",
    )
    assert sent[-1].event == f"comfy.{kind}.failed"
    assert sent[-1].payload["error"]["code"] == "bad"


class BlockingBackend(FakeBackend):
    async def wait_for_job(self, job_id, *, timeout=None, on_progress=None):
        on_progress(ComfyEvent(event="job.progress", payload={"id": job_id, "progress": 5}))
        await asyncio.Event().wait()


async def test_interrupted_wait_cancels_the_job_and_closes_the_backend(sent):
    backend = BlockingBackend(None, Job(id="j1", status="running"))
    waiting = asyncio.create_task(watch_comfy_job(Creds(backend), "j1", **QUIET))
    await eventually(lambda: sent, message="the first progress event")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await eventually(lambda: backend.closed, message="the backend closed")
    assert backend.cancelled == ["j1"]


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
    job = Job(id="j1", status="completed", outputs=[Output(id="o1", name="a.txt")])
    backend = FakeBackend(ComfyEvent(event="job.completed", payload={"id": "j1"}), job, [10, 50])
    # Without the bounds, the wait would return only when the writes let go, after 4 s.
    asyncio.get_running_loop().call_later(4.0, stubborn.release.set)
    started = time.monotonic()
    try:
        result = await watch_comfy_job(backend, "j1", progress_interval=0)
        elapsed = time.monotonic() - started
    finally:
        stubborn.release.set()
    assert result is job
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
    job = Job(id="j1", status="completed", outputs=[Output(id="o1", name="a.txt")])
    backend = FakeBackend(ComfyEvent(event="job.completed", payload={"id": "j1"}), job, [10])
    assert await asyncio.wait_for(watch_comfy_job(backend, "j1"), scaled(5)) is job
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
    job = Job(id="j1", status="completed", outputs=[Output(id="o1", name="a.txt")])
    backend = FakeBackend(ComfyEvent(event="job.completed", payload={"id": "j1"}), job, [10, 50])
    result = await asyncio.wait_for(watch_comfy_job(backend, "j1", emit_events=False), scaled(5))
    assert result is job
    assert writes == []  # returned while every write still waits for the API
    slow.set()
    assert await flush_artifact_writes(timeout=scaled(5))
    assert ("outputs", "comfy-job-j1-outputs") in writes
    assert ("create", 100.0) in writes or ("update", 100.0) in writes  # the final value
