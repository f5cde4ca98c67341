"""ComfyUI's HTTP side: the package's one HTTP session in the ComfyUI dialect, and its routes.

`ComfyUIHttp` is what `ComfyUIBackend` (and, through
it, the shared stream) uses for every request to the server's ``/api/...`` routes: ``/prompt``,
``/queue``, ``/interrupt``, ``/history``, ``/view``, ``/upload/image`` and ``/models``.

Everything that must hold for every server is the shared
`HttpSession`'s: one error translation (a refused graph, ``400``
on ``/prompt``, becomes ``InvalidWorkflow`` through `COMFYUI_DIALECT`), the key only to the
server's origin (as ``X-API-Key``), no redirects on API calls, bounded reads, no key over plain
http to another machine without opt-in, and the one streaming download. What is ComfyUI's own is
here: the routes, the lenient reading of their answers (any shape the server sends ends in the
package's `ComfyProtocolError`, never a ``TypeError``), and the
WebSocket handshake, whose refusal becomes ``WebSocketAuthError`` and whose debug log never shows the
``token``.

Example:
    >>> http = ComfyUIHttp("http://127.0.0.1:8188", "comfyui-doc")
    >>> "comfyui-doc" in http.redact("token=comfyui-doc") + repr(http)
    False
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from prefect_comfy.backends.comfyui import mapping as mapping
from prefect_comfy.exceptions import (
    ComfyError,
    ComfyProtocolError,
    ComfyTransportError,
)
from prefect_comfy.redaction import redacting_logger
from prefect_comfy.settings import ComfySettings
from prefect_comfy.transport.dialect import Dialect
from prefect_comfy.transport.download import MAX_REDIRECTS
from prefect_comfy.transport.download import download as stream_download
from prefect_comfy.transport.errors import handshake_error
from prefect_comfy.transport.http import HttpSession

__all__ = ["COMFYUI_DIALECT", "MAX_REDIRECTS", "ComfyUIHttp"]


def _refused_prompt(status: int, body: Any) -> ComfyError | None:
    """ComfyUI refuses a graph with HTTP 400 and ``{"error": …, "node_errors": …}``."""
    if status == 400 and isinstance(body, dict) and ("error" in body or "node_errors" in body):
        return mapping.invalid_workflow(body)
    return None


COMFYUI_DIALECT = Dialect(
    name="ComfyUI",
    key_header="X-API-Key",
    auth_hint="check the api_key of the ComfyUI server block",
    workflow_error=_refused_prompt,
)
"""ComfyUI (and Comfy Cloud's ComfyUI-compatible API): ``X-API-Key`` to any path of the origin."""


def _shape(what: str, expected: str, body: Any) -> ComfyProtocolError:
    return ComfyProtocolError(
        f"ComfyUI answered {what} with a {type(body).__name__} where {expected} was expected"
    )


class ComfyUIHttp(HttpSession):
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
        super().__init__(origin, key, COMFYUI_DIALECT, settings=settings, transport=transport)

    def __repr__(self) -> str:
        return f"ComfyUIHttp(origin={self.origin!r})"

    def same_origin(self, url: httpx.URL) -> bool:
        """Whether ``url`` is on the server's own origin (the only place the key goes)."""
        return self.key_allowed(url)

    async def call(  # type: ignore[override]
        self, method: str, path: str, *, retry: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """One call to ``{origin}{path}``; retried (429, 5xx, transport) when ``retry``."""
        return await self.request(
            method, f"{self.origin}{path}", what=f"{method} {path}", retry=retry, **kwargs
        )

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:  # type: ignore[override]
        """`call`, decoded (``None`` for an empty body)."""
        return await super().json(method, f"{self.origin}{path}", what=f"{method} {path}", **kwargs)

    # -- the routes -------------------------------------------------------------------------------
    async def queue_records(self) -> dict[str, tuple[str, mapping.PromptRecord]]:
        """Queued prompts: ``{prompt_id: ("running" | "pending", record)}``."""
        body = await self.json("GET", "/api/queue") or {}
        if not isinstance(body, dict):
            raise _shape("GET /api/queue", "an object", body)
        found: dict[str, tuple[str, mapping.PromptRecord]] = {}
        for status, key in (("running", "queue_running"), ("pending", "queue_pending")):
            items = body.get(key) or []
            if not isinstance(items, list):
                raise _shape(f"GET /api/queue ({key})", "a list", items)
            for item in items:
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
        if body is None:
            return []
        if not isinstance(body, list):
            raise _shape(f"GET /api/models/{folder}", "a list of file names", body)
        return [str(name) for name in body if isinstance(name, (str, int, float))]

    async def post_prompt(self, body: dict[str, Any], *, retry: bool) -> str:
        """``POST /prompt``; the prompt id ComfyUI answered."""
        answer = await self.json("POST", "/api/prompt", json=body, retry=retry, workflow=True)
        prompt_id = answer.get("prompt_id") if isinstance(answer, dict) else None
        if not isinstance(prompt_id, (str, int)) or isinstance(prompt_id, bool) or not prompt_id:
            raise ComfyProtocolError("ComfyUI accepted the prompt but returned no prompt_id")
        return str(prompt_id)

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
        """``HEAD`` of a URL on the server (``NotFound`` when it serves nothing there).

        A redirect counts as an answer (Comfy Cloud sends ``/view`` to signed storage).
        """
        return (await self.call("HEAD", url[len(self.origin) :], redirect_ok=True)).headers

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

        The connection logs through a `RedactingLogger`, so the
        ``token`` in its URL never reaches a log line, at any level.

        Raises:
            ComfyConfigError: the key would travel over plain ``ws://`` to another machine.
            WebSocketAuthError: the handshake was refused (HTTP 401/403).
            ComfyTransportError: the server could not be reached, or answered another status.
        """
        from websockets.exceptions import InvalidStatus

        if connect is None:
            from websockets.asyncio.client import connect
        self.require_secure_key_transport()
        s = self.settings
        try:
            return await connect(
                self.ws_url(client_id),
                ping_interval=s.ping_interval,
                ping_timeout=s.ping_timeout,
                open_timeout=s.connect_timeout,
                close_timeout=min(2.0, s.connect_timeout),
                # Previews and SaveImageWebsocket images are binary frames: as much as one API
                # answer may hold, no more (a larger frame closes the socket with 1009).
                max_size=s.max_response_bytes,
                logger=redacting_logger("websockets.client", [self._key]),
            )
        except InvalidStatus as exc:
            raise handshake_error(exc.response.status_code, self.dialect, self.origin) from None
        except (TimeoutError, OSError) as exc:
            raise ComfyTransportError(
                self.redact(f"could not open the ComfyUI event stream: {type(exc).__name__}: {exc}")
            ) from None

    # -- downloads --------------------------------------------------------------------------------
    async def download(self, url: httpx.URL, dest: str | Path, name: str) -> Path:
        """Stream ``url`` into ``dest`` (a folder, or a file path) with the one download.

        ``name`` is the output's ``subfolder/filename``: in a folder it keeps its subfolder, inside
        the folder (`safe_relative_path`). The key goes
        only to the server's origin, decided per redirect hop. Retried.
        """
        return await stream_download(self, url, dest, name)
