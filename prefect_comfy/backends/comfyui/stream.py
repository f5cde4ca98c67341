"""ComfyUI's event stream: one WebSocket per ``events()`` call, reconnecting, mapped to Comfy events.

Sharing is not this module's business: the waiting layer (`prefect_comfy.waiting`) keeps one
stream per server and credentials per process, so ComfyUI's rule that only the socket whose
``clientId`` submitted a prompt gets its execution messages (and that a second socket with the same
id silently takes over) needs nothing special here. Every backend of a process uses the same client
id for a server (see `process_client_id`).

What the stream makes of ComfyUI's frames (see `prefect_comfy.backends.comfyui.mapping`):

- ``execution_start``/``execution_cached``/``progress_state``/``executing``/``progress`` →
  ``job.progress`` (coalesced);
- ``execution_success`` → ``job.completed``, outputs read from ``/history/{id}`` (polled briefly:
  the entry is written just after the frame);
- a binary preview frame (`prefect_comfy.backends.comfyui.previews`) → ``job.preview`` of
  the prompt it names, else of the prompt this client's frames say is executing; none for a
  prompt that ended, none that is malformed or too big;
- ``execution_error`` → ``job.failed``; ``execution_interrupted`` → ``job.cancelled``;
- every ``status`` frame (a broadcast: the queue changed) → a **reconciliation**: ``/queue`` and the
  newest ``/history`` entries are compared with what the stream has seen, and the terminal event of
  each prompt that ended since is emitted, from any client. A pending prompt that left the queue
  without a history entry was deleted (``job.cancelled``), or, when the connection was lost in
  between, lost in a ComfyUI restart (``job.lost``).

The one poll: while a model wait is pending (a ``get_model`` answered "not there yet"), the stream
lists ``/api/models/{folder}`` every `MODEL_POLL_INTERVAL` seconds and emits ``model.ready``
when the file appears (`prefect_comfy.backends.comfyui.model_poll`). ComfyUI has no event for
model files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

from prefect_comfy.backends.comfyui import mapping as mapping
from prefect_comfy.backends.comfyui.http import ComfyUIHttp
from prefect_comfy.backends.comfyui.memory import REMEMBERED, ServerMemory
from prefect_comfy.backends.comfyui.model_poll import poll_models
from prefect_comfy.backends.comfyui.previews import (
    FEATURE_FLAGS_MESSAGE,
    parse_preview,
)
from prefect_comfy.bounded import Bounded
from prefect_comfy.exceptions import (
    ComfyError,
    WebSocketAuthError,
    WebSocketConnectionError,
)
from prefect_comfy.models import ComfyEvent, Job, preview_event
from prefect_comfy.transport.backoff import Backoff
from prefect_comfy.transport.reconnect import FOREVER, Attempt, DeadLink, Reconnect

__all__ = ["ComfyUIStream"]

logger = logging.getLogger(__name__)

MODEL_POLL_INTERVAL = 2.0
"""Seconds between two listings of a model folder while a model wait is pending."""
HISTORY_WINDOW = 32
"""Newest ``/history`` entries read per reconciliation (doubled while all of them are new)."""
HISTORY_WINDOW_MAX = 1024
"""The most ``/history`` entries one reconciliation reads."""
HISTORY_POLL_TIMEOUT = 10.0
"""How long ``execution_success`` waits for its ``/history`` entry before the next ``status`` must do."""
_END = object()

Hook = Callable[[], Awaitable[None]]


class ComfyUIStream:
    """The events of one ``events()`` call, on the caller's loop.

    Args:
        http: the server's REST side (not closed here).
        memory: shared with the backend and its clones (tags, graphs, deletions, model watches).
        on_connect: run as a task after every connect and reconnect, once reconciled.
        on_disconnect: awaited when a connection that ``on_connect`` ran for is lost, before the
            reconnect; its exceptions are logged.
        forever: reconnect without a budget (else the settings' ``max_reconnect_attempts``).
    """

    def __init__(
        self,
        http: ComfyUIHttp,
        memory: ServerMemory,
        *,
        open_socket: Callable[[], Awaitable[Any]],
        get_job: Callable[[str], Awaitable[Job]],
        on_connect: Hook | None = None,
        on_disconnect: Hook | None = None,
        forever: bool = False,
    ) -> None:
        self.http = http
        self._forever = forever
        self.state = memory
        self._open_socket = open_socket
        self._get_job = get_job
        self.live = False
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tracker = mapping.ProgressTracker()
        self._seen_history = Bounded(REMEMBERED)
        self._ended = Bounded(REMEMBERED)
        self._tracked: dict[str, str] = {}
        self._baseline = False
        self._dirty = False
        self._reconciler: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._graphs_known = Bounded(1024)
        self._executing: str | None = None
        self.previews_dropped = 0

    async def iterate(self) -> AsyncIterator[ComfyEvent]:
        """The events, across reconnects, until the caller stops or the budget is spent.

        Raises:
            WebSocketAuthError: the key was refused.
            WebSocketConnectionError: the reconnect budget is spent.
        """
        self._loop = asyncio.get_running_loop()
        with self.state.lock:
            self.state.streams.add(self)
        runner = asyncio.ensure_future(self._run())
        try:
            while True:
                item = await self._queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            with self.state.lock:
                self.state.streams.discard(self)
            tasks = [t for t in (runner, self._reconciler, self._poller, *self._tasks) if t]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # never suppress(BaseException)

    # -- from the backend (any thread) -----------------------------------------------------------
    def publish(self, event: ComfyEvent) -> None:
        """An event the backend made up (a deleted pending prompt, an upload)."""
        self._soon(self.emit, event)

    def models_changed(self) -> None:
        """A model watch was added: make sure the poller runs."""
        self._soon(self.ensure_model_poller)

    def _soon(self, callback: Callable[..., None], *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the stream's loop is gone
                self._loop.call_soon_threadsafe(callback, *args)

    def _fan_out(self, item: Any) -> None:
        self._queue.put_nowait(item)

    # -- the connection loop -------------------------------------------------------------------
    async def _run(self) -> None:
        http = self.http
        settings = http.settings
        reconnect = Reconnect(
            f"ComfyUI event stream at {http.origin}",
            max_attempts=FOREVER if self._forever else settings.max_reconnect_attempts,
            backoff=Backoff(initial=settings.reconnect_delay, maximum=settings.max_reconnect_delay),
            describe=http.redact,
            on_disconnect=self._on_disconnect,
        )
        try:
            async for attempt in reconnect:
                async with attempt:
                    await self._serve_one(attempt)
        except (WebSocketAuthError, WebSocketConnectionError) as exc:
            if isinstance(exc, WebSocketAuthError):
                logger.warning("%s", exc)
            self._fan_out(exc)
        finally:
            self.live = False

    async def _serve_one(self, attempt: Attempt) -> None:
        """One connection: open, reconcile, then read frames until it drops."""
        conn = await self._open_socket()
        with self.state.lock:
            self.state.connections_opened += 1
        try:
            logger.info("ComfyUI event stream connected to %s", self.http.origin)
            send = getattr(conn, "send", None)
            if send is not None:  # ask for previews that name their prompt
                with contextlib.suppress(Exception):
                    await send(FEATURE_FLAGS_MESSAGE)
            await self._reconcile(baseline=not self._baseline, after_gap=self._baseline)
            self._baseline = self.live = True
            attempt.established()
            self.ensure_model_poller()
            if self._on_connect is not None:
                self._spawn(_run_hook(self._on_connect, "on_connect"))
            async for raw in conn:
                attempt.alive()
                self._on_frame(raw)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            if code == 1011 or (exc.sent is not None and exc.sent.code == 1011):
                raise DeadLink(f"no answer to pings ({self.http.redact(str(exc))})") from None
            raise
        finally:
            self.live = False
            with contextlib.suppress(Exception):
                await conn.close()

    # -- frames --------------------------------------------------------------------------------
    def _on_frame(self, raw: str | bytes) -> None:
        if isinstance(raw, (bytes, bytearray, memoryview)):
            self._on_binary(raw)
            return
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
            self._executing = prompt_id
            self._register(prompt_id)
            payload = self._tracker.feed(kind, data)
            if payload is not None:
                tags = self.state.tags.get(prompt_id)
                if tags is not None:
                    payload["tags"] = list(tags)
                self._fan_out(ComfyEvent(event="job.progress", payload=payload))
            if kind == "executing" and data.get("node") is None:
                self._executing = None
                self._cue()  # the worker is done with the prompt: its history is written
        elif kind == "execution_success" and prompt_id:
            self._spawn(self._outcome(prompt_id, "job.completed", None))
        elif kind == "execution_error" and prompt_id:
            self._spawn(self._outcome(prompt_id, "job.failed", data))
        elif kind == "execution_interrupted" and prompt_id:
            self._spawn(self._outcome(prompt_id, "job.cancelled", data))

    def _on_binary(self, raw: bytes | bytearray | memoryview) -> None:
        """A preview frame → ``job.preview`` of its prompt; anything else is dropped."""
        preview = parse_preview(raw)
        prompt_id = preview and (preview.prompt_id or self._executing)
        if preview is None or prompt_id is None or ("job", prompt_id) in self._ended:
            self.previews_dropped += 1
            return
        tags = self.state.tags.get(prompt_id)
        event = preview_event(
            prompt_id,
            preview.image,
            preview.mime_type,
            node_id=preview.node_id,
            tags=list(tags) if tags is not None else None,
        )
        if event is not None:
            self._fan_out(event)

    def _register(self, prompt_id: str, graph: dict[str, Any] | None = None) -> None:
        """Give the progress tracker a prompt's graph: the submitter's copy, else ``/queue``'s."""
        if prompt_id in self._graphs_known:
            return
        graph = self.state.graphs.take(prompt_id) or graph
        if graph:
            self._graphs_known.remember(prompt_id)
            self._tracker.register(prompt_id, graph)

    async def _tags(self, prompt_id: str) -> list[str] | None:
        tags = self.state.tags.get(prompt_id)
        if tags is None:
            with contextlib.suppress(ComfyError):
                tags = (await self._get_job(prompt_id)).tags
                self.state.tags.remember(prompt_id, tags)
        return tags

    async def _outcome(self, prompt_id: str, name: str, data: dict[str, Any] | None) -> None:
        """Emit a prompt's outcome once its ``/history`` entry is written (so that a ``get_job``
        after the event agrees with it); from the frame alone if the entry is slow to come."""
        deadline = time.monotonic() + HISTORY_POLL_TIMEOUT
        pauses = Backoff(0.02, 0.5, jitter=False)
        while ("job", prompt_id) not in self._ended:
            try:
                entry = await self.http.history_entry(prompt_id)
            except ComfyError as exc:
                logger.debug("could not read the history of %s: %s", prompt_id, exc)
                entry = None
            if entry:
                self.emit_history(prompt_id, entry)
                return
            if time.monotonic() > deadline:
                break
            await pauses.pause()
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
        name, payload = mapping.outcome_event(prompt_id, entry, self.http.origin)
        self.emit(ComfyEvent(event=name, payload=payload))

    def emit(self, event: ComfyEvent) -> None:
        """Fan an event out; a job's or upload's outcome only once."""
        rid = event.resource_id
        if event.is_terminal and rid is not None:
            key = (event.kind, rid)
            if self._ended.seen(key):
                return
            if event.kind == "job":
                self._tracker.forget(rid)
                self._graphs_known.take(rid)
                self._tracked.pop(rid, None)
                if self._executing == rid:
                    self._executing = None
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
        http = self.http
        queue = await http.queue_records()  # first the queue, then the history: no gap
        window = HISTORY_WINDOW
        while True:
            history = await http.recent_history(window)
            if baseline or len(history) < window or window >= HISTORY_WINDOW_MAX:
                break
            if any(pid in self._seen_history for pid in history):
                break
            window *= 2
        for pid, entry in history.items():
            if self._seen_history.seen(pid):
                continue
            if baseline or ("job", pid) in self._ended or not isinstance(entry, dict):
                continue
            self.emit_history(pid, entry)
        for pid in [p for p in self._tracked if p not in queue and p not in history]:
            if ("job", pid) in self._ended:
                continue
            entry = await http.history_entry(pid)
            if entry:
                self.emit_history(pid, entry)
            else:  # it left the queue without running: deleted
                tags = self.state.tags.get(pid) or []
                if after_gap and pid not in self.state.cancelled:
                    self.emit(ComfyEvent(event="job.lost", payload=mapping.lost_payload(pid, tags)))
                else:
                    self.emit(
                        ComfyEvent(
                            event="job.cancelled", payload=mapping.cancelled_payload(pid, tags)
                        )
                    )
        self._tracked = {pid: status for pid, (status, _) in queue.items()}
        for pid, (_, record) in queue.items():
            self.state.tags.remember(pid, record.tags, replace=False)
            self._register(pid, record.graph)

    # -- model files: the one poll ---------------------------------------------------------------
    def ensure_model_poller(self) -> None:
        if self.state.model_watches and self.live and (self._poller is None or self._poller.done()):
            self._poller = asyncio.ensure_future(self._poll_models())

    async def _poll_models(self) -> None:
        await poll_models(self.http, self.state, self.emit, interval=MODEL_POLL_INTERVAL)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _run_hook(hook: Hook, name: str) -> None:
    try:
        await hook()
    except Exception:
        logger.exception("the %s hook of the ComfyUI event stream failed", name)
