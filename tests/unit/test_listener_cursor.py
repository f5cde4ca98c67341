"""The listener's durable cursor and its catch-up by time, on in-memory seams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
from prefect_comfy.backends.comfyui.mapping import finished_at as _finished_at
from prefect_comfy.exceptions import ComfyConfigError
from prefect_comfy.listener import cursor as cursor_module
from prefect_comfy.listener.catchup import catch_up
from prefect_comfy.listener.cursor import (
    CursorState,
    FileCursor,
    VariableCursor,
    default_cursor_path,
    open_cursor,
)
from prefect_comfy.listener.keeper import CursorKeeper
from prefect_comfy.listener.tracking import Bounded
from prefect_comfy.models import ComfyEvent, Input, Job, Model, Page
from tests.support.listener_fakes import (
    FakeEventsClient,
    make_listener,
    started,
)
from tests.support.memory import STREAM_ONLY, MemoryBackend
from tests.support.waiting import eventually, scaled

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
ADDRESS = "http://comfy.test"


# -- the state file -----------------------------------------------------------------------------
async def test_a_file_cursor_round_trips_and_is_replaced_atomically(tmp_path):
    cursor = FileCursor(tmp_path / "deep" / "cursor.json")
    assert await cursor.load() is None
    state = CursorState(ADDRESS, [("job", "job_1", "running"), ("input", "inp_1", "ended")], NOW)
    await cursor.save(state)
    await cursor.save(CursorState(ADDRESS, [("job", "job_2", "running")], NOW))
    loaded = await cursor.load()
    assert loaded == CursorState(ADDRESS, [("job", "job_2", "running")], NOW)
    assert os.listdir(tmp_path / "deep") == ["cursor.json"]  # no temporary file left behind


async def test_a_damaged_cursor_file_is_ignored_with_a_warning(tmp_path, caplog):
    path = tmp_path / "cursor.json"
    path.write_text("{ half a write")
    assert await FileCursor(path).load() is None
    path.write_text(json.dumps({"version": 99}))
    assert await FileCursor(path).load() is None
    assert "ignoring the listener cursor" in caplog.text


def test_where_the_cursor_lives(tmp_path, monkeypatch):
    monkeypatch.delenv(cursor_module.CURSOR_ENV, raising=False)
    default = open_cursor(None, connection_key="http://x#abc", name="farm/1")
    assert isinstance(default, FileCursor)
    assert default.path == default_cursor_path("http://x#abc", "farm/1")
    assert default.path.parent.name == "comfy-listener" and default.path.name.startswith("farm-1-")
    assert "abc" not in default.path.name  # a hash of the connection key, not the key's hash
    assert open_cursor("none", connection_key="k") is None
    assert isinstance(open_cursor(str(tmp_path / "c.json"), connection_key="k"), FileCursor)
    variable = open_cursor("variable:comfy-cursor", connection_key="k")
    assert isinstance(variable, VariableCursor) and variable.name == "comfy-cursor"
    monkeypatch.setenv(cursor_module.CURSOR_ENV, "off")
    assert open_cursor(None, connection_key="k") is None
    with pytest.raises(ComfyConfigError, match="--cursor variable:comfy-listener-cursor"):
        open_cursor("variable:no spaces", connection_key="k")


async def test_a_variable_cursor_keeps_the_newest_entries_that_fit(monkeypatch, caplog):
    saved: dict[str, Any] = {}

    class FakeVariable:
        @staticmethod
        async def aset(name: str, value: Any, overwrite: bool = False) -> None:
            saved[name] = value

        @staticmethod
        async def aget(name: str, default: Any = None) -> Any:
            return saved.get(name, default)

    monkeypatch.setattr("prefect.variables.Variable", FakeVariable)
    cursor = VariableCursor("comfy-cursor")
    entries = [("job", f"job_{i:05d}", "running") for i in range(1_000)]
    await cursor.save(CursorState(ADDRESS, entries, NOW))
    kept = (await cursor.load()).in_flight
    assert len(json.dumps(saved["comfy-cursor"])) <= 5_000
    assert kept == entries[-len(kept) :] and 0 < len(kept) < 1_000
    assert "holds only the newest" in caplog.text


# -- keeping it ----------------------------------------------------------------------------------
class MemoryCursor:
    description = "memory"

    def __init__(self, state: CursorState | None = None) -> None:
        self.state = state
        self.saves = 0

    async def load(self) -> CursorState | None:
        return self.state

    async def save(self, state: CursorState) -> None:
        self.state = state
        self.saves += 1


async def test_the_keeper_restores_in_flight_and_holds_the_watermark_until_caught_up():
    memory = MemoryCursor(CursorState(ADDRESS, [("job", "job_1", "running")], NOW))
    in_flight = Bounded(10)
    pending: list[tuple[str, str]] = [("job", "job_9")]
    keeper = CursorKeeper(
        memory,
        address=ADDRESS,
        in_flight=in_flight,
        ended=Bounded(10),
        pending=lambda: pending,
        connected=lambda: True,
    )
    await keeper.restore()
    assert dict(in_flight) == {("job", "job_1"): "running"}
    await keeper.save()
    # Not caught up yet: the watermark stays where the last run left it.
    assert memory.state.watermark == NOW
    # What was received but not sent yet stays in flight in the cursor.
    assert ("job", "job_9", "ended") in memory.state.in_flight
    keeper.caught_up = True
    in_flight.pop(("job", "job_1"))
    pending.clear()
    await keeper.save()
    assert memory.state.in_flight == [] and memory.state.watermark > NOW
    saves = memory.saves
    await keeper.save()  # nothing changed
    assert memory.saves == saves


async def test_the_cursor_remembers_what_was_sent_so_that_a_catch_up_skips_it():
    memory = MemoryCursor()
    ended = Bounded(10)
    pending = [("job", "job_queued")]
    keeper = CursorKeeper(
        memory,
        address=ADDRESS,
        in_flight=Bounded(10),
        ended=ended,
        pending=lambda: pending,
        connected=lambda: True,
    )
    ended.remember(("job", "job_sent"), True)
    ended.remember(("job", "job_queued"), True)  # its outcome waits: in flight, not ended
    await keeper.save()
    assert memory.state.ended == [("job", "job_sent")]
    assert ("job", "job_queued", "ended") in memory.state.in_flight

    restarted = Bounded(10)
    await CursorKeeper(
        memory,
        address=ADDRESS,
        in_flight=Bounded(10),
        ended=restarted,
        pending=list,
        connected=lambda: True,
    ).restore()
    assert ("job", "job_sent") in restarted


async def test_a_cursor_of_another_server_is_ignored(caplog):
    memory = MemoryCursor(CursorState("http://other", [("job", "job_1", "running")], NOW))
    in_flight = Bounded(10)
    keeper = CursorKeeper(
        memory,
        address=ADDRESS,
        in_flight=in_flight,
        ended=Bounded(10),
        pending=list,
        connected=lambda: True,
    )
    assert await keeper.restore() is None
    assert not in_flight and "belongs to http://other" in caplog.text


async def test_a_restarted_listener_reconciles_what_its_predecessor_saw_in_flight(tmp_path):
    path = tmp_path / "cursor.json"
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    first = make_listener(backend, client, cursor=FileCursor(path))
    task = await started(first)
    backend.server.emit("job.progress", id="job_1", status="running", progress=10, tags=[])
    await eventually(lambda: len(client.events) == 1)
    # Saved within a second while running (a SIGKILL then loses nothing: see the Restart test).
    await eventually(lambda: path.exists(), message="the cursor saved")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [e[1] for e in json.loads(path.read_text())["in_flight"]] == ["job_1"]

    backend.server.jobs["job_1"] = Job(id="job_1", status="completed", tags=[])
    second_client = FakeEventsClient()
    second = make_listener(backend, second_client, cursor=FileCursor(path))
    task = await started(second)
    await eventually(lambda: second_client.named("comfy.job.completed"), message="reconciled")
    second.stop()
    await asyncio.wait_for(task, scaled(10))
    assert second.stats.reconciled == 1
    assert json.loads(path.read_text())["in_flight"] == []


# -- catching up by time -------------------------------------------------------------------------
class ListingClient:
    """Newest first, like the API: pages of jobs, inputs and models."""

    def __init__(self, jobs: list[Job], inputs: list[Input], models: list[Model]) -> None:
        self.lists = {"job": jobs, "input": inputs, "model": models}
        self.calls: list[tuple[str, int]] = []

    def _page(self, kind: str, offset: int, limit: int) -> Page:
        self.calls.append((kind, offset))
        items = self.lists[kind][offset : offset + limit]
        return Page(
            items=items,
            total=len(self.lists[kind]),
            has_more=offset + limit < len(self.lists[kind]),
        )

    async def list_jobs(self, *, offset: int, limit: int) -> Page:
        return self._page("job", offset, limit)

    async def list_inputs(self, *, offset: int, limit: int) -> Page:
        return self._page("input", offset, limit)

    async def list_models(self, *, offset: int, limit: int) -> Page:
        return self._page("model", offset, limit)


async def test_catch_up_forwards_what_ended_since_and_tracks_what_runs():
    since = NOW - timedelta(minutes=1)
    recent, old = NOW, NOW - timedelta(hours=1)
    jobs = [
        Job(id="j_new_done", status="completed", created_at=recent, completed_at=recent),
        Job(id="j_running", status="running", created_at=recent),
        Job(id="j_seen", status="failed", created_at=recent, completed_at=recent),
        Job(
            id="j_ended_before",
            status="completed",
            created_at=old + timedelta(minutes=59, seconds=30),
            completed_at=old,
        ),
    ]
    jobs += [Job(id=f"j_old_{i}", status="completed", created_at=old) for i in range(250)]
    client = ListingClient(
        jobs,
        [Input(id="i_ready", name="a.png", status="ready", created_at=recent)],
        [Model(id="m_up", name="m", status="uploading", created_at=recent)],
    )

    backend = CloudBackend(api_key="comfyui-unit-key", base_url="http://127.0.0.1:9")
    backend.client = client  # the listing the developer API would answer
    forwarded: list[ComfyEvent] = []
    tracked: list[tuple[str, str, str]] = []

    async def forward(event: ComfyEvent) -> None:
        forwarded.append(event)

    found = await catch_up(
        backend,
        since,
        forward=forward,
        track=lambda *entry: tracked.append(entry),
        already=lambda kind, rid: rid == "j_seen",
    )
    assert [(e.event, e.resource_id) for e in forwarded] == [
        ("job.completed", "j_new_done"),
        ("input.ready", "i_ready"),
    ]
    assert found == 2
    assert tracked == [("job", "j_running", "running"), ("model", "m_up", "uploading")]
    assert "workflow" not in forwarded[0].payload
    # Newest first: the page of old jobs ends the search; the 250 old ones are not all read.
    assert client.calls.count(("job", 100)) == 1 and ("job", 200) not in client.calls


async def test_catch_up_without_a_watermark_or_a_list_reads_nothing():
    assert (
        await catch_up(
            MemoryBackend(capabilities=STREAM_ONLY), None, forward=None, track=None, already=None
        )
        == 0
    )
    assert (
        await catch_up(
            MemoryBackend(capabilities=STREAM_ONLY), NOW, forward=None, track=None, already=None
        )
        == 0
    )


def test_a_comfyui_history_entry_says_when_it_finished():
    stamp = int(NOW.timestamp() * 1000)
    entry = {
        "status": {
            "messages": [
                ["execution_start", {"timestamp": stamp - 5000}],
                ["execution_success", {"timestamp": stamp}],
            ]
        }
    }
    assert _finished_at(entry) == NOW
    assert _finished_at({"status": {}}) is None


async def test_comfyui_catch_up_reads_the_queue_and_the_history_since():
    stamp = lambda when: int(when.timestamp() * 1000)  # noqa: E731

    def entry(when: datetime, outcome: str = "execution_success") -> dict[str, Any]:
        return {
            "prompt": [0, "p", {}, {"prefect_comfy": {"tags": ["t"]}}, []],
            "outputs": {},
            "status": {
                "status_str": "success",
                "messages": [[outcome, {"timestamp": stamp(when)}]],
            },
        }

    class Http:  # what a ComfyUI's /queue and /history answer
        async def queue_records(self) -> dict[str, Any]:
            return {"p_running": ("running", SimpleNamespace(tags=[]))}

        async def recent_history(self, max_items: int) -> dict[str, Any]:
            return {
                "p_old": entry(NOW - timedelta(hours=2)),
                "p_done": entry(NOW),
                "p_stopped": entry(NOW, "execution_interrupted"),
            }

    # A real ComfyUIBackend (its reads are on .http): a fake with the reads on the backend itself
    # once hid that catching up on ComfyUI listed nothing.
    backend = ComfyUIBackend("http://127.0.0.1:8188")
    backend.http = Http()
    forwarded: list[ComfyEvent] = []
    tracked: list[tuple[str, str, str]] = []

    async def forward(event: ComfyEvent) -> None:
        forwarded.append(event)

    found = await catch_up(
        backend,
        NOW - timedelta(minutes=5),
        forward=forward,
        track=lambda *e: tracked.append(e),
        already=lambda kind, rid: False,
    )
    assert found == 2
    assert [(e.event, e.resource_id) for e in forwarded] == [  # newest first
        ("job.cancelled", "p_stopped"),
        ("job.completed", "p_done"),
    ]
    assert tracked == [("job", "p_running", "running")]


# -- a state file that disappears or cannot be written (issue 20, #1) ----------------------------
async def test_a_deleted_state_file_is_re_created_at_the_next_save_and_said(tmp_path, caplog):
    path = tmp_path / "cursor.json"
    in_flight = Bounded(10)
    keeper = CursorKeeper(
        FileCursor(path),
        address=ADDRESS,
        in_flight=in_flight,
        ended=Bounded(10),
        pending=list,
        connected=lambda: False,
    )
    in_flight.remember(("job", "job_1"), "running")
    await keeper.save()
    path.unlink()  # a tmp cleaner; nothing in flight changes afterwards
    await keeper.save()
    assert [e[1] for e in json.loads(path.read_text())["in_flight"]] == ["job_1"]
    assert "re-created" in caplog.text


async def test_a_state_file_that_cannot_be_written_stops_the_listener_at_start(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    listener = make_listener(backend, client, cursor=FileCursor(blocker / "cursor.json"))
    with pytest.raises(ComfyConfigError, match="cannot write"):
        await asyncio.wait_for(listener.run(), scaled(10))


async def test_a_failing_save_is_reported_in_the_stats_and_the_heartbeat(tmp_path):
    path = tmp_path / "state" / "cursor.json"
    backend, client = MemoryBackend(capabilities=STREAM_ONLY), FakeEventsClient()
    listener = make_listener(backend, client, cursor=FileCursor(path))
    listener._cursor.interval = 0.01
    task = await started(listener)
    await eventually(lambda: path.exists(), message="the first save")

    def a_file_where_the_folder_was() -> bool:
        # The saver keeps writing (and making the folder) meanwhile: its temporary file may be in
        # the folder, or the folder back, for a moment; try again until the file holds.
        shutil.rmtree(path.parent, ignore_errors=True)
        with contextlib.suppress(OSError):
            path.parent.write_text("")
        return path.parent.is_file()

    await eventually(a_file_where_the_folder_was, message="a file in the folder's place")
    # every save fails from now on
    try:
        backend.server.emit("job.progress", id="job_1", status="running", progress=10, tags=[])
        await eventually(lambda: not listener.heartbeat_event().payload["cursor_durable"])
        beat = listener.heartbeat_event()
        assert beat.resource["comfy.durable"] == "false"
        assert "cursor.json" in beat.payload["cursor_error"]
        path.parent.unlink()
        await eventually(lambda: listener.heartbeat_event().payload["cursor_durable"])
        assert listener.heartbeat_event().resource["comfy.durable"] == "true"
    finally:
        await stop_task(listener, task)


async def stop_task(listener, task):
    listener.stop()
    await asyncio.wait_for(task, scaled(10))


# -- a state file edited by hand, or grown huge (issue 20, #15) -------------------------------------
async def test_a_watermark_without_a_time_zone_is_read_as_utc_and_catch_up_works(tmp_path):
    path = tmp_path / "cursor.json"
    state = CursorState(ADDRESS, [], NOW)
    data = state.to_json()
    data["watermark"] = NOW.replace(tzinfo=None).isoformat()  # a hand edit
    path.write_text(json.dumps(data))
    loaded = await FileCursor(path).load()
    assert loaded is not None and loaded.watermark == NOW
    keeper = CursorKeeper(
        FileCursor(path),
        address=ADDRESS,
        in_flight=Bounded(10),
        ended=Bounded(10),
        pending=list,
        connected=lambda: True,
    )
    await keeper.restore()

    backend = CloudBackend(api_key="comfyui-unit-key", base_url="http://127.0.0.1:9")
    backend.client = ListingClient(
        [Job(id="j_done", status="completed", completed_at=NOW + timedelta(minutes=1))], [], []
    )
    forwarded: list[ComfyEvent] = []

    async def forward(event: ComfyEvent) -> None:
        forwarded.append(event)

    await keeper.catch_up(backend, forward=forward, track=lambda *e: None, already=lambda *k: False)
    assert keeper.caught_up and [e.resource_id for e in forwarded] == ["j_done"]


async def test_a_huge_state_file_is_bounded_on_load(tmp_path, monkeypatch, caplog):
    path = tmp_path / "cursor.json"
    data = CursorState(ADDRESS, [], NOW).to_json()
    data["ended"] = [["job", f"job_{i}"] for i in range(50_000)]
    path.write_text(json.dumps(data))
    loaded = await FileCursor(path).load()
    assert loaded is not None and len(loaded.ended) == cursor_module.ENDED_SAVED
    assert loaded.ended[-1] == ("job", "job_49999")  # the newest kept
    monkeypatch.setattr(cursor_module, "MAX_FILE_BYTES", 1000)
    assert await FileCursor(path).load() is None
    assert "more than a listener writes" in caplog.text
