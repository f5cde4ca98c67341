"""ComfyUI's event stream: ONE WebSocket per process and server, shared by every ``events()`` call.

Why one per process. ComfyUI sends a prompt's execution messages only to the socket whose
``clientId`` submitted it, and a second socket with the same ``clientId`` silently takes over the
first (the first then gets nothing, not even ``status``). So every backend of a process uses the same
client id for a server (:func:`process_client_id`), and every ``events()`` call of the process with
that id shares one :class:`SharedStream`. The stream runs on a small event loop in a daemon thread of
its own (:func:`stream_loop`), so that waits in different event loops (Prefect runs sync tasks in
worker threads) still share the socket; each subscriber gets its events on its own loop.

What the stream makes of ComfyUI's frames (see :mod:`prefect_comfy.backends.comfyui.mapping`):

- ``execution_start``/``execution_cached``/``progress_state``/``executing``/``progress`` →
  ``job.progress`` (coalesced);
- ``execution_success`` → ``job.completed``, outputs read from ``/history/{id}`` (polled briefly:
  the entry is written just after the frame);
- ``execution_error`` → ``job.failed``; ``execution_interrupted`` → ``job.cancelled``;
- every ``status`` frame (a broadcast: the queue changed) → a **reconciliation**: ``/queue`` and the
  newest ``/history`` entries are compared with what the stream has seen, and the terminal event of
  each prompt that ended since is emitted, from any client. This is how a listener in another
  process, which receives no execution messages of other clients, still sees jobs end; a pending
  prompt that left the queue without a history entry was deleted: ``job.cancelled``.

The one poll: while a model wait is pending (a ``get_model`` answered "not there yet"), the stream
lists ``/api/models/{folder}`` every :data:`MODEL_POLL_INTERVAL` seconds and emits ``model.ready``
when the file appears. ComfyUI has no event for model files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed

from prefect_comfy.backends.comfyui import mapping as mapping
from prefect_comfy.exceptions import (
    ComfyError,
    NotFound,
    WebSocketAuthError,
    WebSocketConnectionError,
)
from prefect_comfy.models import ComfyEvent, Job
from prefect_comfy.settings import ComfySettings
from prefect_comfy.transport.backoff import Backoff
from prefect_comfy.transport.reconnect import Attempt, DeadLink, Reconnect


class StreamBackend(Protocol):
    """What the stream needs of :class:`~prefect_comfy.backends.comfyui.backend.StreamBackend`
    (a protocol, so that this module does not import the backend that imports it)."""

    settings: ComfySettings
    address: str

    def redact(self, text: str) -> str: ...
    async def open_socket(self) -> Any: ...
    async def queue_records(self) -> dict[str, tuple[str, mapping.PromptRecord]]: ...
    async def history_entry(self, prompt_id: str) -> dict[str, Any] | None: ...
    async def recent_history(self, max_items: int) -> dict[str, Any]: ...
    async def model_files(self, folder: str) -> list[str]: ...
    async def get_job(self, job_id: str) -> Job: ...
    async def aclose(self) -> None: ...


logger = logging.getLogger(__name__)

MODEL_POLL_INTERVAL = 2.0
"""Seconds between two listings of a model folder while a model wait is pending."""
MODEL_WATCH_TTL = 3600.0
"""A model watch not renewed by a ``get_model`` for this long is dropped."""
HISTORY_WINDOW = 32
"""Newest ``/history`` entries read per reconciliation (doubled while all of them are new)."""
HISTORY_WINDOW_MAX = 1024
"""The most ``/history`` entries one reconciliation reads."""
HISTORY_POLL_TIMEOUT = 10.0
"""How long ``execution_success`` waits for its ``/history`` entry before the next ``status`` must do."""
LINGER = 0.5
"""Seconds the socket stays open after its last subscriber left."""
REMEMBERED = 10_000
"""Prompt ids remembered (tags, seen history, emitted outcomes)."""

CONNECTED = object()
"""Put on a subscriber's queue after every (re)connect, once reconciled: run ``on_connect`` then."""
DISCONNECTED = object()
"""Put on a subscriber's queue when a connection that was ``CONNECTED`` is lost, before the stream
reconnects (not when it closes): run ``on_disconnect`` then."""


class Bounded(OrderedDict):
    """A dict that forgets its oldest entries past ``size``.

    Written from two threads (a backend's caller and the stream's loop): :meth:`remember` and
    :meth:`take` hold a lock; a single read (``in``, ``get``) is atomic anyway.
    """

    def __init__(self, size: int = REMEMBERED) -> None:
        super().__init__()
        self.size = size
        self._lock = threading.Lock()

    def remember(self, key: Any, value: Any = None, *, replace: bool = True) -> None:
        """Store ``key`` as the newest entry (keep an existing value unless ``replace``)."""
        with self._lock:
            if replace or key not in self:
                self[key] = value
            self.move_to_end(key)
            while len(self) > self.size:
                self.popitem(last=False)

    def take(self, key: Any) -> Any:
        """Remove and return ``key``'s value (``None`` when absent)."""
        with self._lock:
            return self.pop(key, None)


# -- process-wide registries --------------------------------------------------------------------
_lock = threading.Lock()
_client_ids: dict[tuple[int, str, str], str] = {}
_states: dict[tuple[int, str, str, str], ServerState] = {}
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None


def process_client_id(origin: str, key_hash: str) -> str:
    """The client id every backend of this process uses for a server (one uuid per process)."""
    key = (os.getpid(), origin, key_hash)
    with _lock:
        value = _client_ids.get(key)
        if value is None:
            value = _client_ids[key] = f"prefect-comfy-{uuid.uuid4()}"
        return value


def server_state(origin: str, key_hash: str, client_id: str) -> ServerState:
    """The process-wide state of one server, key and client id (shared by clones)."""
    key = (os.getpid(), origin, key_hash, client_id)
    with _lock:
        state = _states.get(key)
        if state is None:
            state = _states[key] = ServerState(origin, client_id)
        return state


def stream_loop() -> asyncio.AbstractEventLoop:
    """The event loop (in a daemon thread) that runs every shared ComfyUI stream of the process."""
    global _loop, _loop_pid
    with _lock:
        if _loop is None or _loop_pid != os.getpid() or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="prefect-comfy-comfyui-stream", daemon=True
            )
            thread.start()
            _loop, _loop_pid = loop, os.getpid()
        return _loop


@dataclass
class ServerState:
    """What the backends of one process know about one server (thread-safe where it matters)."""

    origin: str
    client_id: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    tags: Bounded = field(default_factory=Bounded)
    graphs: Bounded = field(default_factory=lambda: Bounded(1024))
    cancelled: Bounded = field(default_factory=Bounded)
    idempotency: Bounded = field(default_factory=Bounded)
    model_watches: dict[str, tuple[str, str, str | None, float]] = field(default_factory=dict)
    stream: SharedStream | None = None
    pending_adds: int = 0
    connections_opened: int = 0

    def note_submitted(self, prompt_id: str, tags: list[str], graph: dict[str, Any]) -> None:
        with self.lock:
            self.tags.remember(prompt_id, list(tags))
            self.graphs.remember(prompt_id, graph)

    def publish(self, event: ComfyEvent) -> None:
        """Hand an event the backend made up (a deleted pending job, an upload) to the stream."""
        with self.lock:
            stream = self.stream
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.emit, event)

    def watch_model(self, model_id: str, folder: str, filename: str, type: str | None) -> None:
        with self.lock:
            self.model_watches[model_id] = (
                folder,
                filename,
                type,
                time.monotonic() + MODEL_WATCH_TTL,
            )
            stream = self.stream
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.ensure_model_poller)

    def subscribe(self, sub: Subscriber, make_backend: Callable[[], StreamBackend]) -> SharedStream:
        loop = stream_loop()
        with self.lock:
            stream = self.stream
            if stream is None:
                stream = self.stream = SharedStream(self, loop, make_backend)
            self.pending_adds += 1
        loop.call_soon_threadsafe(stream.add, sub)
        return stream


@dataclass(eq=False)
class Subscriber:
    """One ``events()`` call: a queue on the caller's loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    def put(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the subscriber's loop is gone
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class SharedStream:
    """The one WebSocket of a process to a server; lives on :func:`stream_loop`."""

    def __init__(
        self,
        state: ServerState,
        loop: asyncio.AbstractEventLoop,
        make_backend: Callable[[], StreamBackend],
    ) -> None:
        self.state = state
        self.loop = loop
        self._make_backend = make_backend
        self.backend: StreamBackend | None = None
        self.subscribers: set[Subscriber] = set()
        self.live = False
        self.closed = False
        self._runner: asyncio.Task[None] | None = None
        self._closer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tracker = mapping.ProgressTracker()
        self._seen_history = Bounded()
        self._ended = Bounded()
        self._tracked: dict[str, str] = {}
        self._baseline = False
        self._dirty = False
        self._reconciler: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None

    # -- subscribers (called on the stream loop) -----------------------------------------------
    def add(self, sub: Subscriber) -> None:
        with self.state.lock:
            self.state.pending_adds -= 1
        self.subscribers.add(sub)
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None
        if self.live:
            sub.put(CONNECTED)
        if self._runner is None:
            self._runner = asyncio.ensure_future(self._run())

    def remove(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if not self.subscribers and self._closer is None:
            self._closer = self.loop.call_later(LINGER, self._close_if_idle)

    def _close_if_idle(self) -> None:
        self._closer = None
        with self.state.lock:
            if self.subscribers or self.state.pending_adds:
                return
            self.closed = True
            if self.state.stream is self:
                self.state.stream = None
        asyncio.ensure_future(self._shutdown())

    async def _shutdown(self) -> None:
        tasks = [t for t in (self._runner, self._reconciler, self._poller, *self._tasks) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # never suppress(BaseException)
        if self.backend is not None:
            await self.backend.aclose()

    def _fan_out(self, item: Any) -> None:
        for sub in list(self.subscribers):
            sub.put(item)

    # -- the connection loop -------------------------------------------------------------------
    async def _run(self) -> None:
        self.backend = backend = self._make_backend()
        settings = backend.settings
        reconnect = Reconnect(
            f"ComfyUI event stream at {backend.address}",
            max_attempts=settings.max_reconnect_attempts,
            backoff=Backoff(initial=settings.reconnect_delay, maximum=settings.max_reconnect_delay),
            describe=backend.redact,
            on_disconnect=self._disconnected,
        )
        error: BaseException | None = None
        try:
            async for attempt in reconnect:
                if not self.subscribers or self.closed:
                    return
                async with attempt:
                    await self._serve_one(backend, attempt)
        except (WebSocketAuthError, WebSocketConnectionError) as exc:
            error = exc
            if isinstance(exc, WebSocketAuthError):
                logger.warning("%s", exc)
        finally:
            self.live = False
            if error is not None:
                with self.state.lock:
                    self.closed = True
                    if self.state.stream is self:
                        self.state.stream = None
                self._fan_out(error)
                self.subscribers.clear()
                for task in [t for t in (self._reconciler, self._poller, *self._tasks) if t]:
                    task.cancel()

    async def _serve_one(self, backend: Any, attempt: Attempt) -> None:
        """One connection: open, reconcile, then read frames until it drops."""
        conn = await backend.open_socket()
        with self.state.lock:
            self.state.connections_opened += 1
        try:
            logger.info("ComfyUI event stream connected to %s", backend.address)
            await self._reconcile(baseline=not self._baseline, after_gap=self._baseline)
            self._baseline = self.live = True
            attempt.established()
            self.ensure_model_poller()
            self._fan_out(CONNECTED)
            async for raw in conn:
                attempt.alive()
                self._on_frame(raw)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            if code == 1011 or (exc.sent is not None and exc.sent.code == 1011):
                raise DeadLink(f"no answer to pings ({backend.redact(str(exc))})") from None
            raise
        finally:
            self.live = False
            with contextlib.suppress(Exception):
                await conn.close()

    async def _disconnected(self) -> None:
        self._fan_out(DISCONNECTED)  # each subscriber runs its on_disconnect

    # -- frames --------------------------------------------------------------------------------
    def _on_frame(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            return  # previews
        try:
            message = json.loads(raw)
            kind, data = message["type"], message.get("data") or {}
        except (ValueError, KeyError, TypeError):
            logger.warning("skipping a ComfyUI frame that is not {type, data} JSON")
            return
        prompt_id = str(data["prompt_id"]) if data.get("prompt_id") else None
        if kind == "status":
            self._cue()
        elif kind in mapping.PROGRESS_FRAMES and prompt_id:
            if ("job", prompt_id) in self._ended:
                return
            self._register(prompt_id)
            payload = self._tracker.feed(kind, data)
            if payload is not None:
                tags = self.state.tags.get(prompt_id)
                if tags is not None:
                    payload["tags"] = list(tags)
                self._fan_out(ComfyEvent(event="job.progress", payload=payload))
            if kind == "executing" and data.get("node") is None:
                self._cue()  # the worker is done with the prompt: its history is written
        elif kind == "execution_success" and prompt_id:
            self._spawn(self._outcome(prompt_id, "job.completed", None))
        elif kind == "execution_error" and prompt_id:
            self._spawn(self._outcome(prompt_id, "job.failed", data))
        elif kind == "execution_interrupted" and prompt_id:
            self._spawn(self._outcome(prompt_id, "job.cancelled", data))

    def _register(self, prompt_id: str) -> None:
        graph = self.state.graphs.take(prompt_id)
        if graph:
            self._tracker.register(prompt_id, graph)

    async def _tags(self, prompt_id: str) -> list[str] | None:
        tags = self.state.tags.get(prompt_id)
        if tags is None and self.backend is not None:
            with contextlib.suppress(ComfyError):
                tags = (await self.backend.get_job(prompt_id)).tags
                self.state.tags.remember(prompt_id, tags)
        return tags

    async def _outcome(self, prompt_id: str, name: str, data: dict[str, Any] | None) -> None:
        """Emit a prompt's outcome once its ``/history`` entry is written (so that a ``get_job``
        after the event agrees with it); from the frame alone if the entry is slow to come."""
        assert self.backend is not None
        deadline = time.monotonic() + HISTORY_POLL_TIMEOUT
        delay = 0.02
        while ("job", prompt_id) not in self._ended:
            try:
                entry = await self.backend.history_entry(prompt_id)
            except ComfyError as exc:
                logger.debug("could not read the history of %s: %s", prompt_id, exc)
                entry = None
            if entry:
                self.emit_history(prompt_id, entry)
                return
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(0.5, delay * 2)
        if data is None or ("job", prompt_id) in self._ended:
            logger.warning("no /history entry for ComfyUI prompt %s yet", prompt_id)
            return
        tags = await self._tags(prompt_id) or []
        if name == "job.failed":
            payload = mapping.failed_payload(prompt_id, data, tags)
        else:
            payload = mapping.cancelled_payload(prompt_id, tags, data)
        self.emit(ComfyEvent(event=name, payload=payload))

    def emit_history(self, prompt_id: str, entry: dict[str, Any]) -> None:
        """Emit the outcome of a finished prompt from its ``/history`` entry."""
        assert self.backend is not None
        name, payload = mapping.outcome_event(prompt_id, entry, self.backend.address)
        self.emit(ComfyEvent(event=name, payload=payload))

    def emit(self, event: ComfyEvent) -> None:
        """Fan an event out; a job's or upload's outcome only once."""
        rid = event.resource_id
        if event.is_terminal and rid is not None:
            key = (event.kind, rid)
            if key in self._ended:
                return
            self._ended.remember(key)
            if event.kind == "job":
                self._tracker.forget(rid)
                self._tracked.pop(rid, None)
                tags = event.payload.get("tags")
                if isinstance(tags, list):
                    self.state.tags.remember(rid, tags)
            event = event.model_copy(update={"id": f"comfyui:{event.event}:{rid}"})
        self._fan_out(event)

    # -- reconciliation: /queue and /history against what was seen ------------------------------
    def _cue(self) -> None:
        self._dirty = True
        if self._reconciler is None or self._reconciler.done():
            self._reconciler = asyncio.ensure_future(self._reconcile_while_dirty())

    async def _reconcile_while_dirty(self) -> None:
        while self._dirty:
            self._dirty = False
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("could not reconcile with ComfyUI's queue and history: %s", exc)

    async def _reconcile(self, *, baseline: bool = False, after_gap: bool = False) -> None:
        """Emit the outcome of every prompt that ended since the last look (none for a baseline).

        A queued prompt that is gone with no history entry was deleted (``job.cancelled``) if the
        connection stayed up meanwhile; ``after_gap`` (the first look after a reconnect) it was
        lost: ComfyUI forgets its queue when it restarts, which also drops the socket (``job.lost``).
        """
        backend = self.backend
        assert backend is not None
        queue = await backend.queue_records()  # first the queue, then the history: no gap
        window = HISTORY_WINDOW
        while True:
            history = await backend.recent_history(window)
            if baseline or len(history) < window or window >= HISTORY_WINDOW_MAX:
                break
            if any(pid in self._seen_history for pid in history):
                break
            window *= 2
        for pid, entry in history.items():
            if pid in self._seen_history:
                continue
            self._seen_history.remember(pid)
            if baseline or ("job", pid) in self._ended or not isinstance(entry, dict):
                continue
            self.emit_history(pid, entry)
        for pid in [p for p in self._tracked if p not in queue and p not in history]:
            if ("job", pid) in self._ended:
                continue
            entry = await backend.history_entry(pid)
            if entry:
                self.emit_history(pid, entry)
            else:  # it left the queue without running: deleted
                tags = self.state.tags.get(pid) or []
                if after_gap and pid not in self.state.cancelled:
                    self.emit(ComfyEvent(event="job.lost", payload=_lost_payload(pid, tags)))
                else:
                    self.emit(
                        ComfyEvent(
                            event="job.cancelled", payload=mapping.cancelled_payload(pid, tags)
                        )
                    )
        self._tracked = {pid: status for pid, (status, _) in queue.items()}
        for pid, (_, record) in queue.items():
            self.state.tags.remember(pid, record.tags, replace=False)

    # -- model files: the one poll ---------------------------------------------------------------
    def ensure_model_poller(self) -> None:
        if self.state.model_watches and self.live and (self._poller is None or self._poller.done()):
            self._poller = asyncio.ensure_future(self._poll_models())

    async def _poll_models(self) -> None:
        backend = self.backend
        assert backend is not None
        while True:
            now = time.monotonic()
            with self.state.lock:
                for mid in [m for m, w in self.state.model_watches.items() if w[3] < now]:
                    del self.state.model_watches[mid]
                watches = dict(self.state.model_watches)
            if not watches:
                return
            listings: dict[str, set[str] | None] = {}
            for model_id, (folder, filename, type_, _) in watches.items():
                if folder not in listings:
                    try:
                        listings[folder] = set(await backend.model_files(folder))
                    except NotFound:
                        listings[folder] = set()
                    except ComfyError as exc:
                        logger.debug("could not list ComfyUI models/%s: %s", folder, exc)
                        listings[folder] = None
                files = listings[folder]
                if files is not None and filename in files:
                    with self.state.lock:
                        self.state.model_watches.pop(model_id, None)
                    payload = {"id": model_id, "name": filename, "status": "ready"}
                    if type_:
                        payload["type"] = type_
                    self.emit(ComfyEvent(event="model.ready", payload=payload))
            await asyncio.sleep(MODEL_POLL_INTERVAL)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _lost_payload(prompt_id: str, tags: list[str]) -> dict[str, Any]:
    return {
        "id": prompt_id,
        "status": "lost",
        "tags": list(tags),
        "error": {
            "code": "lost",
            "message": "ComfyUI no longer has this prompt in its queue or history "
            "(it restarted while the connection was down)",
        },
    }
