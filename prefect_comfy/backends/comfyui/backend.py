"""A self-hosted ComfyUI (or Comfy Cloud's ComfyUI-compatible API) as a `ComfyBackend`.

REST calls go to the server's ``/api/...`` routes (ComfyUI serves every route with and without the
prefix) through `prefect_comfy.backends.comfyui.http`, where every failure is translated; the
event stream is `prefect_comfy.backends.comfyui.stream` (one WebSocket per process and server);
answers and frames are mapped by `prefect_comfy.backends.comfyui.mapping`; the ids it submits
and listens with are derived in `prefect_comfy.backends.comfyui.client_id`. Building a backend
does no I/O: the httpx client (with the process's shared SSL context) and the default settings are
made on first use.

An optional API key (Comfy Cloud) travels as the ``X-API-Key`` header and as the WebSocket's
``token`` query parameter, only ever to the server's own origin, and never shows in a log line, an
exception or a ``repr``.

Example:
    >>> backend = ComfyUIBackend("http://127.0.0.1:8188", api_key="comfyui-doc")
    >>> backend.address, backend.kind
    ('http://127.0.0.1:8188', 'comfyui')
    >>> "comfyui-doc" in backend.connection_key + repr(backend)
    False
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar

import httpx
from pydantic import SecretStr

from prefect_comfy.backends.base import (
    Capabilities,
    ComfyBackend,
    ConnectCallback,
    DisconnectCallback,
    Recent,
    Source,
    matches_any,
    validate_pattern,
)
from prefect_comfy.backends.comfyui import mapping as mapping
from prefect_comfy.backends.comfyui import uploads
from prefect_comfy.backends.comfyui.client_id import IDEMPOTENCY_NAMESPACE as IDEMPOTENCY_NAMESPACE
from prefect_comfy.backends.comfyui.client_id import key_hash
from prefect_comfy.backends.comfyui.client_id import process_client_id as process_client_id
from prefect_comfy.backends.comfyui.http import ComfyUIHttp
from prefect_comfy.backends.comfyui.memory import ServerMemory
from prefect_comfy.backends.comfyui.stream import ComfyUIStream
from prefect_comfy.exceptions import (
    ComfyConfigError,
    ComfyProtocolError,
    NotFound,
)
from prefect_comfy.models import ComfyEvent, Input, Job, Model, Output
from prefect_comfy.settings import ComfySettings
from prefect_comfy.transport.origins import normalize_origin

__all__ = ["DEFAULT_URL", "ComfyUIBackend"]

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8188"
"""Where a local ComfyUI listens by default."""


class ComfyUIBackend(ComfyBackend):
    """A ComfyUI server (or Comfy Cloud's ComfyUI-compatible API).

    Args:
        url: the server's origin, such as ``http://127.0.0.1:8188`` or ``https://cloud.comfy.org``.
        api_key: an API key for Comfy Cloud's ComfyUI-compatible API; none for a local ComfyUI.
        client_id: the ``clientId`` to submit and listen with. Leave it unset: every backend of a
            process then shares one id per server, which is what lets one WebSocket receive every
            job's execution messages. Set a different one only to behave like another process.
        transport: an httpx transport (``httpx.MockTransport`` in tests).
        settings: timeouts, retries and reconnect budget (``ComfySettings()`` if omitted; its
            ``api_key`` and ``base_url`` are not used here).
        connect: the WebSocket factory, ``websockets.asyncio.client.connect`` by default (a seam
            for tests).

    Raises:
        ComfyConfigError: the URL is not ``http(s)://host[:port]``.
    """

    kind: ClassVar[str] = "comfyui"
    capabilities: ClassVar[Capabilities] = Capabilities(find_jobs_by_tag=True, node_catalog=True)
    url_probe: ClassVar[tuple[str, frozenset[int]] | None] = ("/system_stats", frozenset({200}))

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | SecretStr | None = None,
        *,
        client_id: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        settings: ComfySettings | None = None,
        connect: Any = None,
    ) -> None:
        self._origin = normalize_origin(url or DEFAULT_URL)
        if isinstance(api_key, SecretStr):
            api_key = api_key.get_secret_value()
        self._key: str | None = (api_key or "").strip() or None
        self._hash = key_hash(self._key)
        self.client_id = client_id or process_client_id(self._origin, self._hash)
        self._transport = transport
        self._connect = connect
        self._memory = ServerMemory.of(self.connection_key)
        self.http = ComfyUIHttp(self._origin, self._key, settings, transport)
        """Requests to the server (its httpx client is made on the first one)."""

    @property
    def settings(self) -> ComfySettings:
        """Timeouts, retries and reconnect budget (``ComfySettings()``, made on first use, if none
        was passed)."""
        return self.http.settings

    # -- identity -----------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """The server's origin (no key, no path)."""
        return self._origin

    @property
    def connection_key(self) -> str:
        """``address#<sha256(key)[:16] or "nokey">#<client id>``: equal for every backend of a process."""
        return f"{self._origin}#{self._hash}#{self.client_id}"

    @property
    def api_key(self) -> SecretStr | None:
        """The key, as a ``SecretStr`` (``None`` for a local ComfyUI)."""
        return SecretStr(self._key) if self._key else None

    def clone(self) -> ComfyUIBackend:
        """A new backend with the same URL, key, client id, settings and transport (and so the
        same `ServerMemory`)."""
        return ComfyUIBackend(
            self._origin,
            self._key,
            client_id=self.client_id,
            transport=self._transport,
            settings=self.settings,
            connect=self._connect,
        )

    def __repr__(self) -> str:
        return f"ComfyUIBackend(address={self._origin!r})"

    @property
    def stream_stats(self) -> dict[str, int]:
        """Counters of the streams of this backend and its clones (for tests and benchmarks)."""
        return {
            "connections_opened": self._memory.connections_opened,
            "subscribers": len(self._memory.streams),
        }

    # -- jobs ---------------------------------------------------------------------------------
    async def submit(
        self,
        workflow: dict[str, Any],
        *,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Job:
        """``POST /prompt`` with this backend's client id; tags go into ``extra_data``.

        With an ``idempotency_key`` the prompt id is derived from it, so a repeat finds the first
        prompt in ``/queue`` or ``/history`` and returns it instead of queueing the graph again.

        Raises:
            InvalidWorkflow: ComfyUI refused the graph (one entry per bad node and input).
        """
        if not isinstance(workflow, dict) or not workflow:
            raise ComfyConfigError("a ComfyUI workflow is a non-empty API-format graph (a dict)")
        tags = list(dict.fromkeys(tags))
        body: dict[str, Any] = {
            "prompt": workflow,
            "client_id": self.client_id,
            "extra_data": mapping.extra_data_for(tags, idempotency_key),
        }
        if idempotency_key:
            prompt_id = str(
                uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{self._origin}\x1f{idempotency_key}")
            )
            existing = await self._find(prompt_id)
            if existing is not None:
                logger.info("ComfyUI prompt %s exists for this idempotency key", prompt_id)
                return existing
            body["prompt_id"] = prompt_id
        # Not retried: a lost answer to a submit that reached the server would queue it twice.
        prompt_id = await self.http.post_prompt(body, retry=bool(idempotency_key))
        self._memory.note_submitted(prompt_id, tags, workflow)
        return Job(id=prompt_id, status="pending", tags=tags, workflow=workflow)

    async def _find(self, prompt_id: str) -> Job | None:
        queued = (await self.http.queue_records()).get(prompt_id)
        if queued is not None:
            return Job(id=prompt_id, status=queued[0], tags=queued[1].tags)
        entry = await self.http.history_entry(prompt_id)
        if entry is not None:
            return mapping.job_from_history(prompt_id, entry, self._origin)
        if prompt_id in self._memory.cancelled:
            return Job(
                id=prompt_id, status="cancelled", tags=self._memory.tags.get(prompt_id) or []
            )
        return None

    async def get_job(self, job_id: str) -> Job:
        """The job from ``/queue`` (pending, running) or ``/history`` (completed, failed, cancelled).

        Raises:
            NotFound: the server has no such prompt (a prompt this process deleted from the queue
                answers ``cancelled``).
        """
        for attempt in range(2):
            job = await self._find(job_id)
            if job is not None:
                return job
            if attempt == 0:
                await asyncio.sleep(0.1)  # a history entry written in between two reads
        raise NotFound(f"ComfyUI at {self._origin} has no prompt {job_id}", status_code=404)

    async def recent(
        self, since: datetime, *, limit: int, kinds: Sequence[str] = ("job", "input", "model")
    ) -> list[Recent]:
        """``/queue`` (in flight) then ``/history`` (the newest ``limit`` prompts the server keeps
        in memory), newest first; a prompt counts when its last status message was written since
        ``since``. ComfyUI keeps no history across its own restart, and lists no uploads."""
        if "job" not in kinds:
            return []
        found = [
            Recent("job", Job(id=pid, status=status, tags=record.tags))
            for pid, (status, record) in (await self.http.queue_records()).items()
        ]
        history = await self.http.recent_history(limit)
        for prompt_id, entry in reversed(list(history.items())):
            ended = mapping.finished_at(entry)
            if ended is None or ended >= since:
                found.append(
                    Recent("job", mapping.job_from_history(prompt_id, entry, self.address), ended)
                )
        return found

    async def unfinished_jobs(self, tag: str | None = None) -> list[Job] | None:
        """Every queued prompt (running or pending, of any client) from one ``GET /queue``; with
        ``tag``, only those whose ``extra_data`` carries it."""
        queue = await self.http.queue_records()
        return [
            Job(id=pid, status=status, tags=record.tags)
            for pid, (status, record) in queue.items()
            if tag is None or tag in record.tags
        ]

    async def cancel(self, job_id: str) -> Job:
        """Pending: delete it from the queue (``job.cancelled`` at once); running: interrupt it.

        An interrupt stops the job at the next node boundary (a node already running finishes).
        """
        for _ in range(3):
            job = await self.get_job(job_id)
            if job.is_terminal:
                return job
            if job.status == "pending":
                await self.http.delete_pending(job_id)
                queued = (await self.http.queue_records()).get(job_id)
                if queued is None:
                    if await self.http.history_entry(job_id) is not None:
                        return await self.get_job(job_id)  # it ran to the end in between
                    self._memory.cancelled.remember(job_id)
                    cancelled = Job(id=job_id, status="cancelled", tags=job.tags)
                    self._memory.publish(
                        ComfyEvent(
                            event="job.cancelled",
                            payload=mapping.cancelled_payload(job_id, job.tags),
                        )
                    )
                    logger.info("Deleted pending ComfyUI prompt %s from the queue", job_id)
                    return cancelled
                continue  # it started running: interrupt it
            await self.http.interrupt(job_id)
            logger.info("Asked ComfyUI to interrupt running prompt %s", job_id)
            return job
        return await self.get_job(job_id)

    async def outputs(self, job_id: str) -> list[Output]:
        """The files of a completed job (``[]`` for any other state)."""
        return list((await self.get_job(job_id)).outputs)

    async def download(self, output: Output, dest: str | PathLike[str]) -> Path:
        """Stream an output's ``/view`` URL to ``dest`` (a folder or a file path).

        Redirects are followed by hand: the key goes only to the server's own origin (Comfy Cloud
        answers ``/api/view`` with a redirect to a signed URL, which never sees it).
        """
        if not output.download_url:
            raise ComfyProtocolError(f"ComfyUI output {output.id} has no download_url")
        url = httpx.URL(self._origin).join(output.download_url)
        filename = output.name or url.params.get("filename") or output.id
        subfolder = url.params.get("subfolder") or ""
        return await self.http.download(
            url, dest, f"{subfolder}/{filename}" if subfolder else filename
        )

    # -- uploads (the work is in prefect_comfy.backends.comfyui.uploads) ----------------------
    async def upload_input(
        self,
        source: Source,
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
        overwrite: bool = False,
    ) -> Input:
        """``POST /upload/image`` into the input folder; ready at once (``input.ready`` is emitted).

        ``name`` may hold a subfolder (``"masks/a.png"``). Without ``overwrite`` a different file
        under a taken name gets a new name (``a (1).png``) and the same bytes keep the old one;
        either way the returned ``name`` is what ``LoadImage`` takes. ComfyUI keeps no tags.

        Raises:
            UploadFailed: ComfyUI refused the file (``input.failed`` is emitted).
        """
        return await uploads.upload_input(
            self.http, self._memory, source, name=name, tags=tags, overwrite=overwrite
        )

    async def get_input(self, input_id: str) -> Input:
        """``ready`` when ``/view?type=input`` serves the file.

        Raises:
            NotFound: no such file in the input folder.
        """
        return await uploads.get_input(self.http, input_id)

    async def upload_model(
        self,
        source: Source,
        *,
        type: str,
        name: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Model:
        """ComfyUI has no model upload API: always raises.

        Raises:
            ComfyConfigError: says where on the server the file must be copied.
        """
        raise uploads.no_model_upload(source, type=type, name=name)

    async def get_model(self, model_id: str) -> Model:
        """``ready`` once ``/models/{folder}`` lists the file; ``pending_upload`` before.

        A ``pending_upload`` answer starts a watch: the stream lists the folder every couple of
        seconds and emits ``model.ready`` when the file appears (the one poll).

        Raises:
            ComfyConfigError: the id is not ``<folder>/<filename>``.
            NotFound: the server has no such model folder.
        """
        return await uploads.get_model(self.http, self._memory, model_id)

    # -- the event stream ---------------------------------------------------------------------
    def ws_url(self) -> str:
        """The WebSocket URL, with the ``token`` (if any) in it: never log it unredacted."""
        return self.http.ws_url(self.client_id)

    async def events(
        self,
        patterns: Sequence[str] = ("*",),
        *,
        on_connect: ConnectCallback | None = None,
        on_disconnect: DisconnectCallback | None = None,
        forever: bool = False,
    ) -> AsyncIterator[ComfyEvent]:
        """Events matching ``patterns`` from one WebSocket to this server (opened for this call).

        ``on_connect`` runs as a task after every connect and reconnect, once the stream has
        reconciled with ``/queue`` and ``/history``. ``on_disconnect`` is awaited when a connection
        that ``on_connect`` ran for is lost, before the stream reconnects (not when this iterator is
        closed); a hook's exception is logged. Two calls with one client id would steal each
        other's execution messages (a ComfyUI rule): share one stream through
        `prefect_comfy.waiting` instead. ``forever``: the reconnect budget never runs out.

        Raises:
            WebSocketAuthError: the key was refused.
            WebSocketConnectionError: the reconnect budget is spent (never with ``forever``).
        """
        try:
            wanted = [validate_pattern(p) for p in patterns]
        except ValueError as exc:
            raise ComfyConfigError(str(exc)) from None
        stream = ComfyUIStream(
            self.http,
            self._memory,
            open_socket=lambda: self.http.open_socket(self.client_id, self._connect),
            get_job=self.get_job,
            on_connect=on_connect,
            on_disconnect=on_disconnect,
            forever=forever,
        )
        async with contextlib.aclosing(stream.iterate()) as events:
            async for event in events:
                if matches_any(wanted, event.event):
                    yield event

    # -- life ---------------------------------------------------------------------------------
    async def object_info(self) -> dict[str, Any]:
        """The server's node catalog: ``GET /api/object_info`` (Comfy Cloud's too)."""
        return await self.http.json("GET", "/api/object_info")

    async def aclose(self) -> None:
        """Close the HTTP client (a stream closes with its ``events()`` iterator)."""
        await self.http.aclose()
