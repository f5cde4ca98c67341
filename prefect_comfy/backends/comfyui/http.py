"""ComfyUI's HTTP side: one lazy httpx client, one send, every failure translated here.

:class:`ComfyUIHttp` is what :class:`~prefect_comfy.backends.comfyui.backend.ComfyUIBackend` (and, through
it, the shared stream) uses for every request to the server's ``/api/...`` routes: ``/prompt``,
``/queue``, ``/interrupt``, ``/history``, ``/view``, ``/upload/image`` and ``/models``.

- :meth:`ComfyUIHttp.send` is the one place where httpx failures and HTTP error answers become the
  package's error tree (a refused graph, ``400`` on ``/prompt``, becomes ``InvalidWorkflow``); a
  streamed download body is read under the same translation, and a refused WebSocket handshake
  (:meth:`ComfyUIHttp.open_socket`) becomes ``WebSocketAuthError`` here too.
- An API key travels as ``X-API-Key`` only to the server's own origin; downloads follow redirects
  by hand, so a signed URL on another origin never sees it. No message carries the key.
- Building one does no I/O and loads no certificates: the ``httpx.AsyncClient`` is made on the
  first request, with the process's one SSL context (:func:`shared_ssl_context`).

Example:
    >>> http = ComfyUIHttp("http://127.0.0.1:8188", "comfyui-doc")
    >>> "comfyui-doc" in http.redact("token=comfyui-doc") + repr(http)
    False
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from prefect_comfy.backends.comfyui import mapping as mapping
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
    WebSocketAuthError,
)
from prefect_comfy.redaction import redact
from prefect_comfy.settings import ComfySettings
from prefect_comfy.transport.retry import RetryPolicy, parse_retry_after
from prefect_comfy.transport.session import USER_AGENT, shared_ssl_context
from prefect_comfy.transport.transfer import CHUNK_SIZE

__all__ = ["MAX_REDIRECTS", "ComfyUIHttp"]

MAX_REDIRECTS = 5
"""Redirects a download follows (by hand) before giving up."""


class ComfyUIHttp:
    """Requests to one ComfyUI server, with retries (429, 5xx, transport) and translated errors.

    Args:
        origin: the server's origin (already normalised: ``http(s)://host[:port]``).
        key: the API key (Comfy Cloud), or ``None``.
        settings: timeouts and retries (``ComfySettings()``, read on first use, when ``None``).
        transport: an httpx transport (``httpx.MockTransport`` in tests).
    """

    def __init__(
        self,
        origin: str,
        key: str | None,
        settings: ComfySettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.origin = origin
        self._key = key
        self._settings = settings
        self._transport = transport
        self._retry: RetryPolicy | None = None
        self._client: httpx.AsyncClient | None = None
        self._closed = False
        self._origin_url: httpx.URL | None = None

    def __repr__(self) -> str:
        return f"ComfyUIHttp(origin={self.origin!r})"

    # -- life -----------------------------------------------------------------------------------
    @property
    def settings(self) -> ComfySettings:
        """Timeouts, retries and reconnect budget (the environment is read on first use)."""
        if self._settings is None:
            self._settings = ComfySettings()
        return self._settings

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every request (429, 5xx and transport failures)."""
        if self._retry is None:
            s = self.settings
            self._retry = RetryPolicy(max_retries=s.max_retries, max_delay=s.retry_max_delay)
        return self._retry

    @property
    def client(self) -> httpx.AsyncClient:
        """The httpx client, made on first use (so building a backend stays free of I/O and SSL).

        Raises:
            ComfyConfigError: the backend was closed.
        """
        if self._closed:
            raise ComfyConfigError("This ComfyUIBackend is closed")
        if self._client is None:
            s = self.settings
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=httpx.Timeout(s.request_timeout, connect=s.connect_timeout),
                verify=shared_ssl_context(),
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                follow_redirects=False,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool (if a request ever opened one). Safe to call twice."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- the key, and where it may go -----------------------------------------------------------
    def redact(self, text: str) -> str:
        """A text with the key (and any ``token=``) removed."""
        return redact(text, [self._key])

    def same_origin(self, url: httpx.URL) -> bool:
        """Whether ``url`` is on the server's own origin (the only place the key goes)."""
        if self._origin_url is None:
            self._origin_url = httpx.URL(self.origin)
        origin = self._origin_url
        return (url.scheme, url.host, url.port) == (origin.scheme, origin.host, origin.port)

    # -- the one place where failures are translated ----------------------------------------------
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
                f"ComfyUI at {self.origin} rejected the API key (HTTP {status})", **fields
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

    @contextlib.contextmanager
    def _translating(self, request: httpx.Request) -> Iterator[None]:
        """An httpx transport error inside becomes :class:`ComfyTransportError` (redacted)."""
        try:
            yield
        except httpx.TransportError as exc:
            raise ComfyTransportError(
                self.redact(
                    f"Could not reach ComfyUI on {request.method} "
                    f"{request.url.copy_with(query=None)}: {type(exc).__name__}: {exc}"
                )
            ) from None

    async def send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """Send one request (the key only to the server's origin); an error answer raises.

        Raises:
            InvalidWorkflow: ``/prompt`` refused the graph (HTTP 400 with ComfyUI's error body).
            ComfyError: any other error answer or transport failure, translated.
        """
        if self._key and self.same_origin(request.url):
            request.headers["X-API-Key"] = self._key
        http = self.client  # raises if closed
        with self._translating(request):
            response = await http.send(request, stream=stream)
        if response.status_code >= 400:
            try:
                with self._translating(request):
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

    async def call(
        self, method: str, path: str, *, retry: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """One call to ``{origin}{path}``; retried (429, 5xx, transport) when ``retry``."""
        url = f"{self.origin}{path}"

        async def attempt() -> httpx.Response:
            return await self.send(self.client.build_request(method, url, **kwargs))

        if not retry:
            return await attempt()
        return await self.retry.call(attempt, what=f"{method} {path}")

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`call`, decoded (``None`` for an empty body)."""
        response = await self.call(method, path, **kwargs)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ComfyProtocolError(f"ComfyUI answered {method} {path} with no JSON") from None

    # -- the routes -------------------------------------------------------------------------------
    async def queue_records(self) -> dict[str, tuple[str, mapping.PromptRecord]]:
        """Queued prompts: ``{prompt_id: ("running" | "pending", record)}``."""
        body = await self.json("GET", "/api/queue") or {}
        found: dict[str, tuple[str, mapping.PromptRecord]] = {}
        for status, key in (("running", "queue_running"), ("pending", "queue_pending")):
            for item in body.get(key) or []:
                record = mapping.prompt_record(item)
                if record is not None:
                    found[record.prompt_id] = (status, record)
        return found

    async def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        """A prompt's ``/history`` entry, or ``None`` (not finished, unknown, or deleted)."""
        body = await self.json("GET", f"/api/history/{quote(prompt_id, safe='')}")
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        return entry if isinstance(entry, dict) and entry else None

    async def recent_history(self, max_items: int) -> dict[str, Any]:
        """The newest ``max_items`` history entries, oldest first."""
        body = await self.json("GET", "/api/history", params={"max_items": max_items})
        return body if isinstance(body, dict) else {}

    async def model_files(self, folder: str) -> list[str]:
        """The files ComfyUI lists under ``models/<folder>``."""
        body = await self.json("GET", f"/api/models/{quote(folder, safe='')}")
        return [str(name) for name in body or []]

    async def post_prompt(self, body: dict[str, Any], *, retry: bool) -> str:
        """``POST /prompt``; the prompt id ComfyUI answered."""
        answer = await self.json("POST", "/api/prompt", json=body, retry=retry)
        prompt_id = str((answer or {}).get("prompt_id") or "")
        if not prompt_id:
            raise ComfyProtocolError("ComfyUI accepted the prompt but returned no prompt_id")
        return prompt_id

    async def delete_pending(self, prompt_id: str) -> None:
        """``POST /queue {"delete": [id]}``."""
        await self.call("POST", "/api/queue", json={"delete": [prompt_id]})

    async def interrupt(self, prompt_id: str) -> None:
        """``POST /interrupt {"prompt_id": id}``."""
        await self.call("POST", "/api/interrupt", json={"prompt_id": prompt_id})

    async def upload_image(
        self, filename: str, data: bytes, *, subfolder: str, overwrite: bool
    ) -> dict[str, Any]:
        """``POST /upload/image`` (multipart, ``type=input``); ComfyUI's answer."""
        form = {"type": "input", "overwrite": "true" if overwrite else "false"}
        if subfolder:
            form["subfolder"] = subfolder
        answer = await self.json(
            "POST", "/api/upload/image", data=form, files={"image": (filename, data)}
        )
        return answer if isinstance(answer, dict) else {}

    async def head(self, url: str) -> httpx.Headers:
        """``HEAD`` of a URL on the server (``NotFound`` when it serves nothing there)."""
        return (await self.call("HEAD", url[len(self.origin) :])).headers

    # -- the WebSocket handshake --------------------------------------------------------------------
    def ws_url(self, client_id: str) -> str:
        """``ws(s)://host/ws?clientId=…`` with the ``token`` (if any) in it: never log it unredacted."""
        origin = httpx.URL(self.origin)
        scheme = "wss" if origin.scheme == "https" else "ws"
        query = {"clientId": client_id}
        if self._key:
            query["token"] = self._key
        return f"{scheme}://{origin.netloc.decode()}/ws?{urlencode(query)}"

    async def open_socket(self, client_id: str, connect: Any = None) -> Any:
        """Open one WebSocket with ``connect`` (``websockets.asyncio.client.connect`` by default).

        Raises:
            WebSocketAuthError: the handshake was refused (HTTP 401/403).
            ComfyTransportError: the server could not be reached, or answered another status.
        """
        from websockets.exceptions import InvalidStatus

        if connect is None:
            from websockets.asyncio.client import connect
        s = self.settings
        try:
            return await connect(
                self.ws_url(client_id),
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
                    f"ComfyUI event stream at {self.origin} refused the API key (HTTP {status})"
                ) from None
            raise ComfyTransportError(
                f"ComfyUI WebSocket handshake answered HTTP {status}"
            ) from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise ComfyTransportError(
                self.redact(f"could not open the ComfyUI event stream: {type(exc).__name__}: {exc}")
            ) from None

    # -- downloads --------------------------------------------------------------------------------
    async def download(self, url: httpx.URL, target: Path, what: str) -> Path:
        """Stream ``url`` into ``target`` (through a ``.part`` file), following redirects by hand.

        The key goes only to the server's origin (:meth:`send` decides per hop). Retried.
        """

        async def attempt() -> Path:
            current = url
            for _ in range(MAX_REDIRECTS + 1):
                request = self.client.build_request("GET", current)
                response = await self.send(request, stream=True)
                try:
                    if response.is_redirect and "Location" in response.headers:
                        current = current.join(response.headers["Location"])
                        continue
                    part = target.with_name(f".{target.name}.part")
                    with self._translating(request), open(part, "wb") as f:
                        async for chunk in response.aiter_bytes(CHUNK_SIZE):
                            f.write(chunk)
                    part.replace(target)
                    return target
                finally:
                    await response.aclose()
            raise ComfyProtocolError(f"too many redirects downloading ComfyUI output {what}")

        return await self.retry.call(attempt, what=f"GET {url.copy_with(query=None)}")
