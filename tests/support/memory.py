"""The suite's one fake Comfy server: an in-memory kind of server, honest to the backend interface.

`MemoryServer` holds what a server knows (jobs, inputs, models), runs submitted jobs on timer
threads, streams events to every open stream (any thread, any event loop), counts what it was
asked, and fails where a test tells it to. `MemoryBackend` is a real `ComfyBackend` on it: every
unit test that needs a backend (the Prefect layer, the waiting layer, the listener, the CLI) runs
on these two, and waits through the real waiting layer, never a patched one; so does the
new-kind-of-server proof (tests/integration/test_new_backend_kind.py).

A test that needs an odd behaviour configures the server (``server.fail("get_job", exc)``,
``server.outcome = None``, ``server.stream_cap = 3``) or gives the backend other
`Capabilities` (``MemoryBackend(server, capabilities=PER_JOB_ONLY)``, a server without an
account-wide stream, as Comfy API v2); it does not write another fake.

Example:
    >>> server = MemoryServer()
    >>> job = server.add_job(status="running")
    >>> _ = server.finish(job.id, "completed")
    >>> server.jobs[job.id].status
    'completed'
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from uuid import uuid4

from prefect_comfy.backends.base import (
    Capabilities,
    ComfyBackend,
    Recent,
    matches_any,
    recent_from_pages,
)
from prefect_comfy.exceptions import (
    CatalogUnavailable,
    ComfyConfigError,
    InvalidWorkflow,
    NotFound,
    TooManyStreams,
)
from prefect_comfy.models import TERMINAL_EVENTS, ComfyEvent, Input, Job, Model, Output
from tests.support.waiting import eventually

__all__ = [
    "EVERYTHING",
    "PER_JOB_ONLY",
    "PNG",
    "STREAMS_ONLY",
    "STREAM_ONLY",
    "Inbox",
    "MemoryBackend",
    "MemoryServer",
]

PNG = b"\x89PNG\r\n\x1a\nin-memory"
"""What every output of the memory server holds."""

EVERYTHING = Capabilities(
    global_event_stream=True, find_jobs_by_tag=True, per_job_streams=True, list_jobs=True
)
"""The memory kind's own capabilities: an account-wide stream, per-job streams, listings."""

PER_JOB_ONLY = Capabilities(per_job_streams=True, list_jobs=True)
"""A server without an account-wide stream (as Comfy API v2): per-job streams and a job list."""

STREAM_ONLY = Capabilities(global_event_stream=True)
"""A server with an account-wide stream that lists nothing: waits and the listener read each
resource they follow, one by one."""

STREAMS_ONLY = Capabilities(per_job_streams=True)
"""A server with per-job streams that lists nothing."""

_names = itertools.count(1)
_named_lock = threading.Lock()
_DROP = object()
_RECONNECT = object()
_END = object()


class Inbox:
    """One stream's queue of events: filled from any thread, read on its reader's event loop."""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._lock = threading.Lock()
        self._reader: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def put(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)
            reader = self._reader
        if reader is not None:
            with contextlib.suppress(RuntimeError):  # the reader's loop is closed: nobody reads
                reader[0].call_soon_threadsafe(reader[1].set)

    async def get(self) -> Any:
        while True:
            with self._lock:
                if self._items:
                    return self._items.pop(0)
                wake = asyncio.Event()
                self._reader = (asyncio.get_running_loop(), wake)
            await wake.wait()


class MemoryServer:
    """An in-memory Comfy server: its resources, its streams, its counters and its faults.

    Resources (``jobs``, ``inputs``, ``models``) are plain dicts a test may read and set (setting
    one emits nothing: it "changed while nobody was connected"). The methods below change them
    and tell every open stream, as a server does.

    A submitted job runs by itself on a timer thread: pending, then running with each value of
    ``steps`` as ``job.progress``, then ``outcome`` (``completed`` with one PNG output, ``failed``
    with `error`, ``cancelled``; ``None`` keeps it running until cancelled, as does a graph with a
    ``Hold`` node). ``auto_run = False`` leaves submitted jobs pending for the test to drive.

    Args:
        name: names the server (its address is ``http://<name>.invalid``); unique by default,
            so that every test has its own process-wide hub.
    """

    _named: ClassVar[dict[str, MemoryServer]] = {}

    @classmethod
    def named(cls, name: str) -> MemoryServer:
        """The process's server of that name (made on first use): what a saved block finds."""
        with _named_lock:
            server = cls._named.get(name)
            if server is None:
                server = cls._named[name] = cls(name)
            return server

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"memory-{next(_names)}-{uuid4().hex[:6]}"
        self.lock = threading.RLock()
        self.jobs: dict[str, Job] = {}
        self.inputs: dict[str, Input] = {}
        self.models: dict[str, Model] = {}
        self.catalog: dict[str, Any] | None = None
        """What ``object_info`` answers where the backend has ``node_catalog``."""
        self.catalog_reads = 0
        self.node_types: set[str] | None = None
        """The node types a submitted graph may use (``None``: those of `catalog`, or any)."""
        self._ids = itertools.count(1)
        self._by_key: dict[str, str] = {}
        # how submitted jobs run
        self.auto_run = True
        self.steps: list[float] = [50.0]
        self.outcome: str | None = "completed"
        self.error = {"code": "E1", "message": "node broke", "node_id": "7"}
        self.output_url: str | None = None
        """The ``download_url`` of outputs, ``{job}`` replaced by the job's id (default none)."""
        self.run_delay = 0.05
        # what it was asked
        self.reads: list[tuple[str, str]] = []
        self.submits: list[dict[str, Any]] = []
        self.cancels: list[str] = []
        self.downloads: list[str] = []
        self.lists: list[dict[str, Any]] = []
        self.unfinished_lists = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.read_gate: asyncio.Event | None = None
        """Reads wait for it (on the reader's loop: for a hub made on the test's loop)."""
        self.closed_backends = 0
        self.page_size = 100
        # the account-wide stream
        self.streams_opened = 0
        self.forever: list[bool] = []
        """What each ``events()`` call was asked: reconnect for ever (the listener's streams)?"""
        self.connects = 0
        self.patterns: list[list[str]] = []
        self._streams: list[Inbox] = []
        # per-job streams
        self.stream_cap: int | None = None
        """Most per-job streams open at once (``None``: no cap); one more raises TooManyStreams."""
        self.retry_after: float | None = 0.3
        self.open_streams = 0
        self.max_open = 0
        self.opened_at: list[float] = []
        self.refused_at: list[float] = []
        self.snapshot_first = True
        """A per-job stream first says where the job stands (as Comfy API v2 does)."""
        self._job_streams: dict[str, list[Inbox]] = {}
        # faults
        self._faults: dict[tuple[str, str | None], tuple[BaseException, int | None]] = {}

    @property
    def address(self) -> str:
        return f"http://{self.name}.invalid"

    # -- faults ----------------------------------------------------------------------------------
    def fail(
        self,
        method: str,
        error: BaseException,
        times: int | None = None,
        *,
        only: str | None = None,
    ) -> None:
        """Make ``method`` (``get_job``, ``cancel``, ``submit``, ``events``, ``job_events``,
        ``list_jobs_page``, ``download`` …) raise ``error``: the next ``times`` calls, or every
        call until `heal`; with ``only``, just the calls about that resource id."""
        self._faults[(method, only)] = (error, times)

    def heal(self, method: str | None = None) -> None:
        """Stop failing ``method`` (every method when ``None``)."""
        for key in list(self._faults):
            if method is None or key[0] == method:
                del self._faults[key]

    def check(self, method: str, rid: str | None = None) -> None:
        """Raise the fault set for ``method`` (about ``rid``), if any."""
        key = (method, rid)
        fault = self._faults.get(key) if rid is not None else None
        if fault is None:
            key = (method, None)
            fault = self._faults.get(key)
        if fault is None:
            return
        error, times = fault
        if times is not None:
            if times <= 1:
                del self._faults[key]
            else:
                self._faults[key] = (error, times - 1)
        raise error

    # -- resources -----------------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids)}"

    def add_job(self, job_id: str | None = None, status: str = "running", **fields: Any) -> Job:
        """Put a job on the server as it is now (no event: it is simply there)."""
        fields.setdefault("created_at", datetime.now(UTC))
        job = Job(id=job_id or self.new_id("job"), status=status, **fields)
        with self.lock:
            self.jobs[job.id] = job
        return job

    def update(self, job_id: str, **update: Any) -> Job | None:
        """Change a job unless it ended; the job as it is now, or ``None`` if it had ended."""
        with self.lock:
            job = self.jobs[job_id]
            if job.is_terminal:
                return None
            job = self.jobs[job_id] = Job.model_validate({**job.model_dump(), **update})
            return job

    def progress(self, job_id: str, value: float, **payload: Any) -> None:
        """The job runs: it is ``running`` at ``value`` percent, and every stream hears it (with
        ``payload`` added to the event's)."""
        job = self.update(job_id, status="running", progress=value)
        if job is not None:
            payload = {"status": "running", "progress": value, "tags": job.tags, **payload}
            self.emit("job.progress", job_id, **payload)

    def finish(
        self,
        job_id: str,
        status: str = "completed",
        *,
        outputs: list[Output] | None = None,
        error: dict[str, Any] | None = None,
    ) -> Job | None:
        """The job ends with ``status`` and every stream hears its terminal event."""
        update: dict[str, Any] = {"status": status, "completed_at": datetime.now(UTC)}
        if status == "completed":
            update["outputs"] = self.outputs_of(job_id) if outputs is None else outputs
        if status == "failed":
            update["error"] = error or self.error
        job = self.update(job_id, **update)
        if job is not None:
            payload = job.model_dump(mode="json", exclude_none=True)
            payload.pop("workflow", None)
            self.emit(f"job.{status}", **payload)
        return job

    def outputs_of(self, job_id: str) -> list[Output]:
        url = self.output_url.format(job=job_id) if self.output_url else None
        return [Output(id=f"{job_id}_out", name=f"{job_id}.png", type="image", download_url=url)]

    def submit(self, workflow: dict[str, Any], tags: Sequence[str], key: str | None) -> Job:
        known = self.node_types
        if known is None and self.catalog is not None:
            known = set(self.catalog)
        if known is not None:
            missing = sorted({str(n.get("class_type")) for n in workflow.values()} - known)
            if missing:  # ComfyUI's own words
                raise InvalidWorkflow(f"Cannot execute because node {missing[0]} does not exist.")
        with self.lock:
            self.submits.append({"workflow": workflow, "tags": list(tags), "key": key})
            if key is not None and key in self._by_key:
                return self.jobs[self._by_key[key]]  # the same key: the same job
            job = self.add_job(status="pending", tags=list(tags), workflow=workflow)
            if key is not None:
                self._by_key[key] = job.id
        hold = any(
            isinstance(node, dict) and node.get("class_type") == "Hold"
            for node in workflow.values()
        )
        if self.auto_run:
            timer = threading.Timer(self.run_delay, self._run, (job.id, hold))
            timer.daemon = True
            timer.start()
        return job

    def _run(self, job_id: str, hold: bool) -> None:
        for value in self.steps:
            self.progress(job_id, value)
        if self.steps:
            time.sleep(0.02)  # a job ends some time after its last progress
        if not hold and self.outcome is not None:
            self.finish(job_id, self.outcome)

    def cancel(self, job_id: str) -> Job:
        with self.lock:
            self.cancels.append(job_id)
            job = self.jobs[job_id]
        return self.finish(job_id, "cancelled") or job

    def add_input(self, input_id: str | None = None, status: str = "ready", **fields: Any) -> Input:
        fields.setdefault("name", "input.png")
        fields.setdefault("created_at", datetime.now(UTC))
        item = Input(id=input_id or self.new_id("inp"), status=status, **fields)
        with self.lock:
            self.inputs[item.id] = item
        return item

    def add_model(self, model_id: str | None = None, status: str = "ready", **fields: Any) -> Model:
        fields.setdefault("name", "model.safetensors")
        fields.setdefault("type", "checkpoint")
        fields.setdefault("created_at", datetime.now(UTC))
        item = Model(id=model_id or self.new_id("mod"), status=status, **fields)
        with self.lock:
            self.models[item.id] = item
        return item

    # -- streams -------------------------------------------------------------------------------
    def emit(
        self, name: str, rid: str | None = None, eid: str | None = None, /, **payload: Any
    ) -> None:
        """Tell every open stream ``name`` about resource ``rid`` (event id ``eid``); a job's own
        streams hear its events too (and end after a terminal one)."""
        if rid is not None:
            payload = {"id": rid, **payload}
        event = ComfyEvent(event=name, payload=payload, id=eid)
        with self.lock:
            streams = list(self._streams) + list(self._job_streams.get(payload.get("id", ""), ()))
        for inbox in streams:
            inbox.put(event)

    @property
    def streaming(self) -> int:
        """Account-wide streams open now."""
        return len(self._streams)

    def streams_of(self, job_id: str) -> int:
        """Per-job streams of ``job_id`` open now."""
        return len(self._job_streams.get(job_id, ()))

    def _to_streams(self, item: Any) -> None:
        with self.lock:
            streams = list(self._streams)
        assert streams, "no stream is open to take it"
        for inbox in streams:
            inbox.put(item)

    def drop(self, *, reconnect: bool = True) -> None:
        """Every open stream loses its connection (``on_disconnect``) and, unless told not to,
        reconnects at once (``on_connect`` again; the stream itself lives on, as a reconnecting
        one does). Events meanwhile are lost, as on a real server."""
        self._to_streams(_DROP)
        if reconnect:
            self._to_streams(_RECONNECT)

    def reconnect(self) -> None:
        """Every dropped stream connects again (after ``drop(reconnect=False)``)."""
        self._to_streams(_RECONNECT)

    def break_streams(self, error: BaseException) -> None:
        """Every open stream ends by raising ``error`` (a refused key, a spent reconnect budget)."""
        self._to_streams(error)

    def end_job_stream(self, job_id: str) -> None:
        """The server closes ``job_id``'s streams without a terminal event."""
        with self.lock:
            streams = list(self._job_streams.get(job_id, ()))
        for inbox in streams:
            inbox.put(_END)

    def open_stream(self, patterns: Sequence[str]) -> Inbox:
        inbox = Inbox()
        with self.lock:
            self.check("events")
            self.streams_opened += 1
            self.patterns.append(list(patterns))
            self._streams.append(inbox)
        return inbox

    def close_stream(self, inbox: Inbox) -> None:
        with self.lock:
            self._streams.remove(inbox)

    def open_job_stream(self, job_id: str) -> Inbox:
        with self.lock:
            self.check("job_events", job_id)
            if self.stream_cap is not None and self.open_streams >= self.stream_cap:
                self.refused_at.append(time.monotonic())
                raise TooManyStreams(
                    "too many streams",
                    status_code=429,
                    error_code="too_many_streams",
                    retry_after=self.retry_after,
                )
            if job_id not in self.jobs:
                raise NotFound(f"{job_id} not found", status_code=404, error_code="not_found")
            inbox = Inbox()
            self.open_streams += 1
            self.max_open = max(self.max_open, self.open_streams)
            self.opened_at.append(time.monotonic())
            self._job_streams.setdefault(job_id, []).append(inbox)
        return inbox

    def close_job_stream(self, job_id: str, inbox: Inbox) -> None:
        with self.lock:
            self.open_streams -= 1
            self._job_streams[job_id].remove(inbox)

    # -- reads ---------------------------------------------------------------------------------
    async def read(self, kind: str, table: dict[str, Any], rid: str) -> Any:
        self.reads.append((kind, rid))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.read_gate is not None:
                await self.read_gate.wait()
            await asyncio.sleep(0)
            self.check(f"get_{kind}", rid)
            with self.lock:
                if rid not in table:
                    raise NotFound(f"{rid} not found", status_code=404, error_code="not_found")
                return table[rid]
        finally:
            self.in_flight -= 1

    async def followed(self, job_id: str) -> None:
        """Wait until somebody follows ``job_id``: a stream is open and the job was read (or the
        unfinished jobs listed) since, as the waiting layer does once a wait is registered.
        Events the server emits from then on reach that wait."""
        await eventually(
            lambda: (
                (self.streaming or self.streams_of(job_id))
                and (("job", job_id) in self.reads or self.unfinished_lists)
            ),
            message=f"a wait following {job_id}",
        )


class MemoryBackend(ComfyBackend):
    """The memory kind of server: a `ComfyBackend` on a `MemoryServer`.

    Args:
        server: the server (a new one when ``None``).
        capabilities: what this server can do (default `EVERYTHING`); `PER_JOB_ONLY` makes a
            server without an account-wide stream.
        key: names the credentials (``connection_key`` is the address and the key).
    """

    kind: ClassVar[str] = "memory"
    capabilities: ClassVar[Capabilities] = EVERYTHING

    def __init__(
        self,
        server: MemoryServer | None = None,
        *,
        capabilities: Capabilities | None = None,
        key: str = "key",
    ) -> None:
        self.server = server if server is not None else MemoryServer()
        if capabilities is not None:
            self.capabilities = capabilities  # type: ignore[misc]  # as V2Backend does
        self.key = key
        self.closed = False

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def connection_key(self) -> str:
        return f"{self.address}#{self.key}"

    def clone(self) -> MemoryBackend:
        return type(self)(self.server, capabilities=self.capabilities, key=self.key)

    # -- jobs ----------------------------------------------------------------------------------
    async def submit(self, workflow, *, tags=(), idempotency_key=None) -> Job:
        self.server.check("submit")
        return self.server.submit(workflow, tags, idempotency_key)

    async def get_job(self, job_id: str) -> Job:
        return await self.server.read("job", self.server.jobs, job_id)

    async def cancel(self, job_id: str) -> Job:
        self.server.check("cancel", job_id)
        if job_id not in self.server.jobs:
            raise NotFound(f"{job_id} not found", status_code=404, error_code="not_found")
        return self.server.cancel(job_id)

    async def outputs(self, job_id: str) -> list[Output]:
        return (await self.get_job(job_id)).outputs

    async def download(self, output: Output, dest) -> Path:
        self.server.check("download", output.id)
        self.server.downloads.append(output.id)
        path = Path(dest)
        if path.is_dir():
            path = path / (output.name or output.id)
        path.write_bytes(PNG)
        return path

    async def unfinished_jobs(self, tag: str | None = None) -> list[Job] | None:
        if not (self.capabilities.list_jobs or self.capabilities.find_jobs_by_tag):
            return None  # the waiting layer then reads pending jobs one by one
        self.server.unfinished_lists += 1
        self.server.check("unfinished_jobs")
        with self.server.lock:
            jobs = list(self.server.jobs.values())
        return [j for j in jobs if not j.is_terminal and (tag is None or tag in j.tags)]

    async def list_jobs_page(
        self, cursor: str | None = None, **filters: Any
    ) -> tuple[list[Job], str | None]:
        if not self.capabilities.list_jobs:
            return await super().list_jobs_page(cursor, **filters)
        self.server.lists.append({"cursor": cursor, **filters})
        self.server.check("list_jobs_page")
        with self.server.lock:
            newest = list(reversed(self.server.jobs.values()))
        size = min(int(filters.get("limit") or self.server.page_size), self.server.page_size)
        start = int(cursor or 0)
        more = start + size < len(newest)
        return newest[start : start + size], str(start + size) if more else None

    async def recent(
        self, since: datetime, *, limit: int, kinds: Sequence[str] = ("job", "input", "model")
    ) -> list[Recent] | None:
        if not self.capabilities.list_jobs:
            return None
        found: list[Recent] = []
        if "job" in kinds:
            found += await recent_from_pages(
                "job", lambda cursor: self.list_jobs_page(cursor), since, limit=limit
            )
        for kind, table in (("input", self.server.inputs), ("model", self.server.models)):
            if kind in kinds:
                items = list(reversed(table.values()))

                async def page(_cursor: Any, items: list[Any] = items) -> tuple[list[Any], None]:
                    return items, None

                found += await recent_from_pages(kind, page, since, limit=limit)  # type: ignore[arg-type]
        return found

    # -- uploads -------------------------------------------------------------------------------
    async def upload_input(self, source, *, name=None, tags=(), idempotency_key=None) -> Input:
        self.server.check("upload_input")
        size = len(_read(source))
        item = self.server.add_input(
            name=name or Path(str(source)).name, size=size, tags=list(tags)
        )
        self.server.emit("input.ready", item.id, name=item.name, status="ready")
        return item

    async def upload_model(
        self, source, *, type, name=None, tags=(), idempotency_key=None
    ) -> Model:
        if not self.capabilities.upload_models:
            raise ComfyConfigError("this memory server takes no models: upload it by hand")
        self.server.check("upload_model")
        size = len(_read(source))
        item = self.server.add_model(
            name=name or Path(str(source)).name, size=size, type=type, tags=list(tags)
        )
        self.server.emit("model.ready", item.id, name=item.name, status="ready")
        return item

    async def get_input(self, input_id: str) -> Input:
        return await self.server.read("input", self.server.inputs, input_id)

    async def get_model(self, model_id: str) -> Model:
        return await self.server.read("model", self.server.models, model_id)

    # -- streams -------------------------------------------------------------------------------
    def events(
        self,
        patterns: Sequence[str] = ("*",),
        *,
        on_connect: Callable[[], Any] | None = None,
        on_disconnect: Callable[[], Any] | None = None,
        forever: bool = False,
    ) -> AsyncIterator[ComfyEvent]:
        if not self.capabilities.global_event_stream:
            return super().events(
                patterns, on_connect=on_connect, on_disconnect=on_disconnect, forever=forever
            )
        self.server.forever.append(forever)
        return self._events(list(patterns), on_connect, on_disconnect)

    async def _events(self, patterns, on_connect, on_disconnect) -> AsyncIterator[ComfyEvent]:
        server = self.server
        inbox = server.open_stream(patterns)
        try:
            server.connects += 1
            if on_connect is not None:
                await on_connect()
            while True:
                item = await inbox.get()
                if item is _DROP:
                    if on_disconnect is not None:
                        await on_disconnect()
                elif item is _RECONNECT:
                    server.connects += 1
                    if on_connect is not None:
                        await on_connect()
                elif isinstance(item, BaseException):
                    raise item
                elif matches_any(patterns, item.event):
                    yield item
        finally:
            server.close_stream(inbox)

    def job_events(self, job_id: str) -> AsyncIterator[ComfyEvent]:
        if not self.capabilities.per_job_streams:
            return super().job_events(job_id)
        return self._job_events(job_id)

    async def _job_events(self, job_id: str) -> AsyncIterator[ComfyEvent]:
        server = self.server
        inbox = server.open_job_stream(job_id)
        try:
            job = server.jobs[job_id]
            if job.is_terminal:
                yield ComfyEvent(
                    event=f"job.{job.status}",
                    payload=job.model_dump(mode="json", exclude_none=True),
                )
                return
            if server.snapshot_first:
                yield ComfyEvent(
                    event="job.progress",
                    payload={"id": job_id, "status": job.status, "progress": job.progress or 0.0},
                )
            while True:
                item = await inbox.get()
                if item is _END:
                    return
                yield item
                if item.event in TERMINAL_EVENTS:
                    return
        finally:
            server.close_job_stream(job_id, inbox)

    # -- the node catalog ----------------------------------------------------------------------
    async def object_info(self) -> dict[str, Any]:
        if not self.capabilities.node_catalog:
            return await super().object_info()
        self.server.catalog_reads += 1
        self.server.check("object_info")
        if self.server.catalog is None:
            raise CatalogUnavailable(f"{self.address} has no node catalog")
        return copy.deepcopy(self.server.catalog)

    # -- life ----------------------------------------------------------------------------------
    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.closed_backends += 1


def _read(source: Any) -> bytes:
    if isinstance(source, bytes):
        return source
    return Path(source).read_bytes()
