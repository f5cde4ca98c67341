"""A self-hosted ComfyUI (or Comfy Cloud's ComfyUI-compatible API) as a :class:`ComfyBackend`.

REST calls go to the server's ``/api/...`` routes (ComfyUI serves every route with and without the
prefix); the event stream is :mod:`prefect_comfy.backends.comfyui_stream` (one WebSocket per process
and server); answers and frames are mapped by :mod:`prefect_comfy.backends.comfyui_mapping`.

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
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import httpx
from pydantic import SecretStr

from prefect_comfy.backends import comfyui_mapping as mapping
from prefect_comfy.backends.base import ComfyBackend, ConnectCallback, Source
from prefect_comfy.backends.comfyui_stream import (
    CONNECTED,
    Subscriber,
    process_client_id,
    server_state,
)
from prefect_comfy.client import protocol
from prefect_comfy.client.rest import CHUNK_SIZE, normalize_origin
from prefect_comfy.client.retry import RetryPolicy, parse_retry_after
from prefect_comfy.exceptions import (
    AuthenticationError,
    ComfyAPIError,
    ComfyConfigError,
    ComfyError,
    ComfyProtocolError,
    ComfyTransportError,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    UploadFailed,
    WebSocketAuthError,
)
from prefect_comfy.models import ComfyEvent, Input, Job, Model, Output
from prefect_comfy.redaction import redact
from prefect_comfy.settings import ComfySettings

__all__ = ["DEFAULT_URL", "ComfyUIBackend"]

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8188"
"""Where a local ComfyUI listens by default."""
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0f7c2e-61a4-5d8e-9c3b-0e2a4f6d8c10")
"""uuid5 namespace of prompt ids derived from idempotency keys."""
MAX_REDIRECTS = 5


def _key_hash(key: str | None) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key else "nokey"


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
        self._hash = _key_hash(self._key)
        self.client_id = client_id or process_client_id(self._origin, self._hash)
        self.settings = settings if settings is not None else ComfySettings()
        self._transport = transport
        self._connect = connect
        self._state = server_state(self._origin, self._hash, self.client_id)
        self.retry = RetryPolicy(
            max_retries=self.settings.max_retries, max_delay=self.settings.retry_max_delay
        )
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(
                self.settings.request_timeout, connect=self.settings.connect_timeout
            ),
            headers={"User-Agent": "prefect-comfy", "Accept": "application/json"},
            follow_redirects=False,
        )

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
        """A new backend with the same URL, key, client id, settings and transport."""
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
        """Counters of the process's shared stream to this server (for tests and benchmarks)."""
        stream = self._state.stream
        return {
            "connections_opened": self._state.connections_opened,
            "subscribers": len(stream.subscribers) if stream is not None else 0,
        }

    def redact(self, text: str) -> str:
        """A text with the key (and any ``token=``) removed."""
        return redact(text, [self._key])

    # -- HTTP, with errors translated here only -------------------------------------------------
    def _same_origin(self, url: httpx.URL) -> bool:
        origin = httpx.URL(self._origin)
        return (url.scheme, url.host, url.port) == (origin.scheme, origin.host, origin.port)

    def _error(self, request: httpx.Request, response: httpx.Response) -> ComfyError:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        code = (error.get("type") or error.get("code")) if isinstance(error, dict) else None
        message = (
            error.get("message")
            if isinstance(error, dict)
            else (error if isinstance(error, str) else response.text[:300])
        )
        where = f"{request.method} {request.url.copy_with(query=None)}"
        text = self.redact(
            f"ComfyUI error on {where}: HTTP {status}"
            + (f" [{code}]" if code else "")
            + (f": {message}" if message else "")
        )
        fields: dict[str, Any] = {"status_code": status, "error_code": code}
        if status in (401, 403):
            return AuthenticationError(
                f"ComfyUI at {self._origin} rejected the API key (HTTP {status})", **fields
            )
        if status == 404:
            return NotFound(text, **fields)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return RateLimited(text, retry_after=retry_after, **fields)
        if status >= 500:
            return ServerError(text, **fields)
        if status in (400, 409, 422):
            return InvalidRequest(text, **fields)
        return ComfyAPIError(text, **fields)

    async def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        if self._key and self._same_origin(request.url):
            request.headers["X-API-Key"] = self._key
        try:
            response = await self._http.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise ComfyTransportError(
                self.redact(
                    f"Could not reach ComfyUI on {request.method} "
                    f"{request.url.copy_with(query=None)}: {type(exc).__name__}: {exc}"
                )
            ) from None
        if response.status_code >= 400:
            try:
                await response.aread()
            finally:
                await response.aclose()
            if request.url.path.endswith("/prompt") and response.status_code == 400:
                with contextlib.suppress(ValueError):
                    body = response.json()
                    if isinstance(body, dict) and ("error" in body or "node_errors" in body):
                        raise mapping.invalid_workflow(body)
            raise self._error(request, response)
        return response

    async def _call(
        self, method: str, path: str, *, retry: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """One call to ``{origin}{path}``; retried (429, 5xx, transport) when ``retry``."""
        url = f"{self._origin}{path}"

        async def attempt() -> httpx.Response:
            return await self._send(self._http.build_request(method, url, **kwargs))

        if not retry:
            return await attempt()
        return await self.retry.call(attempt, what=f"{method} {path}")

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._call(method, path, **kwargs)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ComfyProtocolError(f"ComfyUI answered {method} {path} with no JSON") from None

    # -- reads the stream uses too ----------------------------------------------------------------
    async def queue_records(self) -> dict[str, tuple[str, mapping.PromptRecord]]:
        """Queued prompts: ``{prompt_id: ("running" | "pending", record)}``."""
        body = await self._json("GET", "/api/queue") or {}
        found: dict[str, tuple[str, mapping.PromptRecord]] = {}
        for status, key in (("running", "queue_running"), ("pending", "queue_pending")):
            for item in body.get(key) or []:
                record = mapping.prompt_record(item)
                if record is not None:
                    found[record.prompt_id] = (status, record)
        return found

    async def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        """A prompt's ``/history`` entry, or ``None`` (not finished, unknown, or deleted)."""
        body = await self._json("GET", f"/api/history/{quote(prompt_id, safe='')}")
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        return entry if isinstance(entry, dict) and entry else None

    async def recent_history(self, max_items: int) -> dict[str, Any]:
        """The newest ``max_items`` history entries, oldest first."""
        body = await self._json("GET", "/api/history", params={"max_items": max_items})
        return body if isinstance(body, dict) else {}

    async def model_files(self, folder: str) -> list[str]:
        """The files ComfyUI lists under ``models/<folder>``."""
        body = await self._json("GET", f"/api/models/{quote(folder, safe='')}")
        return [str(name) for name in body or []]

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
        answer = await self._json("POST", "/api/prompt", json=body, retry=bool(idempotency_key))
        prompt_id = str((answer or {}).get("prompt_id") or "")
        if not prompt_id:
            raise ComfyProtocolError("ComfyUI accepted the prompt but returned no prompt_id")
        self._state.note_submitted(prompt_id, tags, workflow)
        return Job(id=prompt_id, status="pending", tags=tags, workflow=workflow)

    async def _find(self, prompt_id: str) -> Job | None:
        queued = (await self.queue_records()).get(prompt_id)
        if queued is not None:
            return Job(id=prompt_id, status=queued[0], tags=queued[1].tags)
        entry = await self.history_entry(prompt_id)
        if entry is not None:
            return mapping.job_from_history(prompt_id, entry, self._origin)
        if prompt_id in self._state.cancelled:
            return Job(id=prompt_id, status="cancelled", tags=self._state.tags.get(prompt_id) or [])
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

    async def cancel(self, job_id: str) -> Job:
        """Pending: delete it from the queue (``job.cancelled`` at once); running: interrupt it.

        An interrupt stops the job at the next node boundary (a node already running finishes).
        """
        for _ in range(3):
            job = await self.get_job(job_id)
            if job.is_terminal:
                return job
            if job.status == "pending":
                await self._call("POST", "/api/queue", json={"delete": [job_id]})
                queued = (await self.queue_records()).get(job_id)
                if queued is None:
                    if await self.history_entry(job_id) is not None:
                        return await self.get_job(job_id)  # it ran to the end in between
                    self._state.cancelled.remember(job_id)
                    cancelled = Job(id=job_id, status="cancelled", tags=job.tags)
                    self._state.publish(
                        ComfyEvent(
                            event="job.cancelled",
                            payload=mapping.cancelled_payload(job_id, job.tags),
                        )
                    )
                    logger.info("Deleted pending ComfyUI prompt %s from the queue", job_id)
                    return cancelled
                continue  # it started running: interrupt it
            await self._call("POST", "/api/interrupt", json={"prompt_id": job_id})
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
        target = Path(dest)
        if target.is_dir() or str(dest).endswith(("/", "\\")):
            target = target / Path(output.name or url.params.get("filename") or output.id).name
        target.parent.mkdir(parents=True, exist_ok=True)

        async def attempt() -> Path:
            current = url
            for _ in range(MAX_REDIRECTS + 1):
                response = await self._send(self._http.build_request("GET", current), stream=True)
                try:
                    if response.is_redirect and "Location" in response.headers:
                        current = current.join(response.headers["Location"])
                        continue
                    part = target.with_name(f".{target.name}.part")
                    with open(part, "wb") as f:
                        async for chunk in response.aiter_bytes(CHUNK_SIZE):
                            f.write(chunk)
                    part.replace(target)
                    return target
                finally:
                    await response.aclose()
            raise ComfyProtocolError(f"too many redirects downloading ComfyUI output {output.id}")

        return await self.retry.call(attempt, what=f"GET {url.copy_with(query=None)}")

    # -- uploads ------------------------------------------------------------------------------
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
        if isinstance(source, bytes):
            if not name:
                raise ComfyConfigError("name is required when uploading bytes")
            data = source
        else:
            path = Path(source)
            data = path.read_bytes()
            name = name or path.name
        assert name is not None
        subfolder, _, filename = name.rpartition("/")
        form = {"type": "input", "overwrite": "true" if overwrite else "false"}
        if subfolder:
            form["subfolder"] = subfolder
        try:
            answer = await self._json(
                "POST", "/api/upload/image", data=form, files={"image": (filename, data)}
            )
        except (InvalidRequest, ComfyAPIError) as exc:
            if isinstance(exc, AuthenticationError):
                raise
            self._state.publish(
                ComfyEvent(
                    event="input.failed",
                    payload={
                        "id": name,
                        "name": name,
                        "status": "failed",
                        "error": {"code": "upload_failed", "message": str(exc)},
                    },
                )
            )
            raise UploadFailed(
                "input", name, error_code="upload_failed", error_message=str(exc)
            ) from None
        answer = answer or {}
        returned = str(answer.get("name") or filename)
        folder = str(answer.get("subfolder") or "")
        input_id = f"{folder}/{returned}" if folder else returned
        item = Input(
            id=input_id,
            name=input_id,
            status="ready",
            size=len(data),
            tags=list(tags),
            download_url=mapping.view_url(self._origin, returned, folder, "input"),
        )
        self._state.publish(
            ComfyEvent(event="input.ready", payload=item.model_dump(mode="json", exclude_none=True))
        )
        return item

    async def get_input(self, input_id: str) -> Input:
        """``ready`` when ``/view?type=input`` serves the file.

        Raises:
            NotFound: no such file in the input folder.
        """
        subfolder, _, filename = str(input_id).rpartition("/")
        url = mapping.view_url(self._origin, filename, subfolder, "input")
        response = await self._call("HEAD", url[len(self._origin) :])
        size = response.headers.get("Content-Length")
        return Input(
            id=input_id,
            name=input_id,
            status="ready",
            size=int(size) if size and size.isdigit() else None,
            download_url=url,
        )

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
        folder = mapping.MODEL_FOLDERS.get(type, type)
        shown = name or (Path(source).name if not isinstance(source, bytes) else "<file>")
        raise ComfyConfigError(
            f"ComfyUI has no API to upload models: copy {shown} into the server's "
            f"models/{folder}/ folder, then wait for model id '{folder}/{shown}' "
            "(wait_for_model notices the file)"
        )

    async def get_model(self, model_id: str) -> Model:
        """``ready`` once ``/models/{folder}`` lists the file; ``pending_upload`` before.

        A ``pending_upload`` answer starts a watch: the shared stream lists the folder every
        couple of seconds and emits ``model.ready`` when the file appears (the one poll).

        Raises:
            ComfyConfigError: the id is not ``<folder>/<filename>``.
            NotFound: the server has no such model folder.
        """
        folder, filename = mapping.model_location(model_id)
        model_type = next((t for t, f in mapping.MODEL_FOLDERS.items() if f == folder), None)
        files = await self.model_files(folder)
        if filename in files:
            return Model(id=model_id, name=filename, status="ready", type=model_type)
        self._state.watch_model(model_id, folder, filename, model_type)
        return Model(id=model_id, name=filename, status="pending_upload", type=model_type)

    # -- the event stream ---------------------------------------------------------------------
    def ws_url(self) -> str:
        """The WebSocket URL, with the ``token`` (if any) in it: never log it unredacted."""
        origin = httpx.URL(self._origin)
        scheme = "wss" if origin.scheme == "https" else "ws"
        query = {"clientId": self.client_id}
        if self._key:
            query["token"] = self._key
        netloc = origin.netloc.decode()
        return f"{scheme}://{netloc}/ws?{urlencode(query)}"

    async def open_socket(self) -> Any:
        """Open one WebSocket (used by the shared stream).

        Raises:
            WebSocketAuthError: the handshake was refused (HTTP 401/403).
        """
        from websockets.exceptions import InvalidStatus

        connect = self._connect
        if connect is None:
            from websockets.asyncio.client import connect
        s = self.settings
        try:
            return await connect(
                self.ws_url(),
                ping_interval=s.ping_interval,
                ping_timeout=s.ping_timeout,
                open_timeout=s.connect_timeout,
                close_timeout=min(2.0, s.connect_timeout),
                max_size=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise WebSocketAuthError(
                    f"ComfyUI event stream at {self._origin} refused the API key (HTTP {status})"
                ) from None
            raise ComfyTransportError(
                f"ComfyUI WebSocket handshake answered HTTP {status}"
            ) from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise ComfyTransportError(
                self.redact(f"could not open the ComfyUI event stream: {type(exc).__name__}: {exc}")
            ) from None

    async def events(
        self,
        patterns: Sequence[str] = ("*",),
        *,
        on_connect: ConnectCallback | None = None,
    ) -> AsyncIterator[ComfyEvent]:
        """Events matching ``patterns`` from the process's one WebSocket to this server.

        ``on_connect`` is awaited (as a task) after every connect and reconnect, once the stream
        has reconciled with ``/queue`` and ``/history``.

        Raises:
            WebSocketAuthError: the key was refused.
            WebSocketConnectionError: the reconnect budget is spent.
        """
        try:
            wanted = [protocol.validate_pattern(p) for p in patterns]
        except ValueError as exc:
            raise ComfyConfigError(str(exc)) from None
        sub = Subscriber(asyncio.get_running_loop())
        stream = self._state.subscribe(sub, self.clone)
        hooks: set[asyncio.Task[Any]] = set()
        try:
            while True:
                item = await sub.queue.get()
                if item is CONNECTED:
                    if on_connect is not None:
                        task = asyncio.create_task(_run_hook(on_connect))
                        hooks.add(task)
                        task.add_done_callback(hooks.discard)
                elif isinstance(item, BaseException):
                    raise item
                elif protocol.matches_any(wanted, item.event):
                    yield item
        finally:
            with contextlib.suppress(RuntimeError):
                stream.loop.call_soon_threadsafe(stream.remove, sub)
            for task in hooks:
                task.cancel()

    # -- life ---------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the HTTP client (the shared stream closes when its last subscriber leaves)."""
        await self._http.aclose()


async def _run_hook(hook: ConnectCallback) -> None:
    try:
        await hook()
    except Exception:
        logger.exception("the on_connect hook of the ComfyUI event stream failed")
