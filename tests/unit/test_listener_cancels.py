"""Unit tests of prefect_comfy.listener.cancels: the Prefect client, the event stream and the Comfy
backend are fakes. A real server, worker and listener: tests/integration/test_suspend_prefect.py."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from prefect.events import Event

from prefect_comfy.listener import cancels
from prefect_comfy.listener.cancels import SuspendedRunCanceller, job_ids_of_labels
from tests.support.memory import MemoryBackend
from tests.support.waiting import scaled


def cancelled(flow_run_id: str, from_name: str | None = "Suspended", **kw: Any) -> Event:
    initial = {"type": "PAUSED", "name": from_name} if from_name else None
    return Event(
        event=kw.get("event", cancels.CANCELLED_EVENT),
        resource={"prefect.resource.id": kw.get("resource", f"prefect.flow-run.{flow_run_id}")},
        payload={"initial_state": initial, "validated_state": {"type": "CANCELLED"}},
    )


class FakeClient:
    def __init__(self, labels: dict[str, dict[str, str]], pages: list[list[Event]] = ()) -> None:
        self.labels = labels
        self.pages = list(pages)
        self.reads: list[str] = []
        self.filters: list[Any] = []

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read_flow_run(self, flow_run_id: str) -> Any:
        self.reads.append(flow_run_id)
        return SimpleNamespace(id=flow_run_id, labels=self.labels.get(flow_run_id, {}))

    def _page(self, index: int) -> Any:
        more = index + 1 < len(self.pages)
        return SimpleNamespace(
            events=self.pages[index], next_page=f"page-{index + 1}" if more else None
        )

    async def read_events(self, filter: Any, limit: int) -> Any:
        self.filters.append(filter)
        return self._page(0) if self.pages else SimpleNamespace(events=[], next_page=None)

    async def read_events_page(self, next_page: str) -> Any:
        return self._page(int(next_page.rsplit("-", 1)[1]))


def memory(statuses: dict[str, str]) -> MemoryBackend:
    """A memory server holding a job of each status."""
    backend = MemoryBackend()
    for job_id, status in statuses.items():
        backend.server.add_job(job_id, status)
    return backend


def canceller(
    backend: MemoryBackend, client: FakeClient, subscriber: Any = None
) -> SuspendedRunCanceller:
    return SuspendedRunCanceller(
        backend, client_factory=lambda: client, subscriber_factory=subscriber
    )


def failed(flow_run_id: str, from_name: str = "Suspended") -> Event:
    return cancelled(flow_run_id, from_name, event=cancels.FAILED_EVENT)


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (cancelled("r1"), ("r1", "cancelled")),
        (cancelled("r1", "Resuming"), ("r1", "cancelled")),
        (cancelled("r1", "Running"), None),  # a run with a process: its own hook cancels the job
        (cancelled("r1", "Paused"), None),  # a blocking pause keeps its process
        (cancelled("r1", None), None),
        (failed("r1"), ("r1", "failed")),  # the suspension's timeout
        (failed("r1", "Running"), None),  # the flow's own failure: its own cleanup
        (failed("r1", "Resuming"), None),
        (cancelled("r1", event="prefect.flow-run.Completed"), None),
        (cancelled("r1", resource="prefect.task-run.r1"), None),
    ],
)
def test_only_the_end_of_a_run_without_a_process_counts(event, expected) -> None:
    assert cancels.suspended_run_ended(event) == expected


def test_a_cancelled_run_cancels_every_job_its_labels_name() -> None:
    labels = {
        "comfy.resume.abc": "job-1",
        "comfy.resume.def": "job-2",
        "comfy.job-id": "job-1",
        "comfy.suspended-job": "job-4",
        "comfy.other": "job-3",
        "team": "x",
    }
    assert job_ids_of_labels(labels) == ["job-1", "job-2", "job-4"]
    assert job_ids_of_labels(None) == []


@pytest.mark.parametrize(
    ("cancel_on_timeout", "expected"),
    [(None, ["job-4"]), ("true", ["job-4"]), ("false", []), ("False", [])],
)
def test_a_timed_out_suspension_cancels_its_job_unless_told_not_to(cancel_on_timeout, expected):
    labels = {"comfy.resume.abc": "job-1", "comfy.job-id": "job-1", "comfy.suspended-job": "job-4"}
    if cancel_on_timeout is not None:
        labels["comfy.cancel-on-timeout"] = cancel_on_timeout
    assert job_ids_of_labels(labels, "failed") == expected
    assert job_ids_of_labels({"comfy.resume.abc": "job-1"}, "failed") == []


async def test_a_timed_out_suspension_is_handled_like_the_ordinary_timeout() -> None:
    run_id = str(uuid.uuid4())
    client = FakeClient({run_id: {"comfy.suspended-job": "live", "comfy.resume.a": "other"}})
    backend = memory({"live": "running", "other": "running"})
    c = canceller(backend, client)
    assert await c.handle(failed(run_id)) == ["live"]
    assert backend.server.cancels == ["live"]
    # a cancellation of the same run afterwards is another ending: its other jobs go too
    assert await c.handle(cancelled(run_id)) == ["other"]


async def test_it_cancels_the_unfinished_jobs_of_a_cancelled_suspended_run() -> None:
    run_id = str(uuid.uuid4())
    client = FakeClient(
        {run_id: {"comfy.resume.a": "old", "comfy.resume.b": "live", "comfy.job-id": "live"}}
    )
    backend = memory({"old": "completed", "live": "running"})
    c = canceller(backend, client)
    assert await c.handle(cancelled(run_id)) == ["live"]
    assert backend.server.cancels == ["live"], "an ended job is left alone, a job is cancelled once"
    assert c.cancelled == ["live"]


async def test_the_same_run_seen_twice_is_handled_once() -> None:
    run_id = str(uuid.uuid4())
    client = FakeClient({run_id: {"comfy.resume.a": "live"}})
    backend = memory({"live": "running"})
    c = canceller(backend, client)
    event = cancelled(run_id)
    await c.handle(event)
    assert await c.handle(event) == []
    assert client.reads == [run_id]


async def test_other_runs_are_not_read(caplog) -> None:
    client = FakeClient({})
    c = canceller(memory({}), client)
    assert await c.handle(cancelled("r1", "Running")) == []
    assert client.reads == []


async def test_a_job_the_server_lacks_or_an_error_is_logged_not_raised(caplog) -> None:
    run_id = str(uuid.uuid4())
    client = FakeClient(
        {run_id: {"comfy.resume.a": "gone", "comfy.resume.b": "bad", "comfy.job-id": "live"}}
    )
    backend = memory({"bad": "running", "live": "pending"})  # "gone" is not on the server
    backend.server.fail("get_job", RuntimeError("boom"), only="bad")
    c = canceller(backend, client)
    with caplog.at_level("INFO", logger=cancels.__name__):
        assert await c.handle(cancelled(run_id)) == ["live"]
    assert "gone of flow run" in caplog.text and "not on this server" in caplog.text
    assert "Could not cancel Comfy job bad" in caplog.text


async def test_the_catch_up_reads_every_page_of_recent_cancellations() -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    client = FakeClient(
        {i: {"comfy.resume.a": f"job-{n}"} for n, i in enumerate(ids)},
        pages=[[cancelled(ids[0]), cancelled(ids[1], "Running")], [cancelled(ids[2])]],
    )
    backend = memory({"job-0": "running", "job-1": "running", "job-2": "running"})
    c = canceller(backend, client)
    assert await c.catch_up() == 2
    assert backend.server.cancels == ["job-0", "job-2"]
    [event_filter] = client.filters
    assert event_filter.event.name == [cancels.CANCELLED_EVENT, cancels.FAILED_EVENT]
    assert event_filter.occurred.since is not None


class FakeSubscriber:
    """Yields its events, then breaks (or ends), like a stream that drops."""

    def __init__(self, events: list[Event], then: BaseException | None) -> None:
        self.events = events
        self.then = then

    async def __aenter__(self) -> FakeSubscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __aiter__(self) -> FakeSubscriber:
        return self

    async def __anext__(self) -> Event:
        if self.events:
            return self.events.pop(0)
        if self.then is not None:
            raise self.then
        raise StopAsyncIteration


async def test_run_follows_the_stream_and_reopens_it_when_it_breaks(monkeypatch) -> None:
    monkeypatch.setattr(cancels, "RETRY_INITIAL", 0)
    ids = [str(uuid.uuid4()) for _ in range(2)]
    client = FakeClient({i: {"comfy.resume.a": f"job-{n}"} for n, i in enumerate(ids)})
    backend = memory({"job-0": "running", "job-1": "running"})
    opened: list[Any] = []
    streams = [
        FakeSubscriber([cancelled(ids[0])], ConnectionError("dropped")),
        FakeSubscriber([cancelled(ids[1]), cancelled(ids[0])], None),
    ]

    def subscriber(event_filter: Any) -> FakeSubscriber:
        opened.append(event_filter)
        return streams.pop(0) if streams else FakeSubscriber([], None)

    c = canceller(backend, client, subscriber)
    task = asyncio.create_task(c.run())

    async def both_cancelled() -> None:
        while len(backend.server.cancels) < 2:
            await asyncio.sleep(0)  # yields to the task under test; bounded by wait_for below

    await asyncio.wait_for(both_cancelled(), scaled(5))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.server.cancels == ["job-0", "job-1"]
    assert len(opened) >= 2 and cancels.CANCELLED_EVENT in opened[0].event.name


async def test_run_survives_a_catch_up_that_fails(monkeypatch) -> None:
    class Broken(FakeClient):
        async def read_events(self, filter: Any, limit: int) -> Any:
            raise RuntimeError("no events API")

    run_id = str(uuid.uuid4())
    backend = memory({"live": "running"})
    c = canceller(
        backend,
        Broken({run_id: {"comfy.resume.a": "live"}}),
        lambda f: FakeSubscriber([cancelled(run_id)], None),
    )
    task = asyncio.create_task(c.run())

    async def done() -> None:
        while not backend.server.cancels:
            await asyncio.sleep(0)

    await asyncio.wait_for(done(), scaled(5))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
