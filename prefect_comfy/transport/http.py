"""The one HTTP session of the package: every request to every kind of Comfy server goes through it.

`HttpSession` owns one lazy ``httpx.AsyncClient`` and the rules that must hold for every server
kind, whatever its `Dialect` says:

- **The key stays home.** `HttpSession.send` attaches the key (in the dialect's header) only
  to URLs on the server's own origin, under the dialect's path prefix; on any other URL (a signed
  storage URL, a redirect target, a presigned upload) it removes it. API calls never follow
  redirects: a redirect answer is an error that names the target and what to do. Downloads follow
  them by hand (`prefect_comfy.transport.download`), deciding afresh on every hop.
- **No key in clear.** An ``http://`` origin that is not this machine gets no key unless the user
  opted in (``allow_insecure_http`` on the block, or ``COMFY_ALLOW_INSECURE_HTTP=1``): the first
  request that would carry it raises `ComfyConfigError` instead.
- **Bounded memory.** An error body is read up to `ERROR_BODY_LIMIT` bytes, a JSON body up to
  ``max_response_bytes`` (settings, 64 MiB by default); more fails with
  `ResponseTooLarge`, whatever the server sends.
- **One translation.** Transport failures and error answers become the package's error tree in
  `prefect_comfy.transport.errors`, in the dialect's words, with the key scrubbed.

Building a session does no I/O and loads no certificates: the httpx client is made on the first
request, with the process's one SSL context (`shared_ssl_context`).

Example:
    >>> import asyncio, httpx
    >>> from prefect_comfy.transport.dialect import Dialect
    >>> def server(request):
    ...     return httpx.Response(200, json={"key_sent": request.headers.get("X-Key") == "k"})
    >>> async def main():
    ...     async with HttpSession("http://127.0.0.1:1", "k", Dialect("Demo", "X-Key"),
    ...                            transport=httpx.MockTransport(server)) as http:
    ...         return await http.json("GET", "http://127.0.0.1:1/ping")
    >>> asyncio.run(main())
    {'key_sent': True}
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, TypeVar
from urllib.parse import unquote

import httpx

from prefect_comfy.exceptions import (
    ComfyConfigError,
    ComfyProtocolError,
    ResponseTooLarge,
)
from prefect_comfy.redaction import redact
from prefect_comfy.settings import ComfySettings
from prefect_comfy.transport.dialect import Dialect
from prefect_comfy.transport.errors import (
    decode_json,
    error_from_response,
    quiet_url,
    redirect_error,
    translating_transport_errors,
)
from prefect_comfy.transport.origins import is_loopback, same_origin, shared_ssl_context
from prefect_comfy.transport.retry import RetryPolicy

__all__ = [
    "ERROR_BODY_LIMIT",
    "USER_AGENT",
    "HttpSession",
    "is_loopback",
    "read_capped",
    "same_origin",
    "shared_ssl_context",
]

logger = logging.getLogger(__name__)

S = TypeVar("S", bound="HttpSession")

USER_AGENT = "prefect-comfy"
ERROR_BODY_LIMIT = 64 * 1024
"""Bytes of an error answer read into memory (its message is cut far shorter)."""
_HOP_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


async def read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Read a streamed body up to ``limit`` bytes (decoded); ``(body, True)`` if there was more."""
    declared = response.headers.get("Content-Length", "")
    if (
        declared.isdigit()
        and int(declared) > limit
        and not response.headers.get("Content-Encoding")
    ):
        return b"", True
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


class HttpSession:
    """Requests to one Comfy server: key scoping, retries, bounded reads and translated errors.

    Args:
        origin: the server's origin (``http(s)://host[:port]``, already normalised).
        key: the API key, or ``None``.
        dialect: how this kind of server speaks HTTP.
        settings: timeouts, retries, size limits and the insecure-http opt-in
            (``ComfySettings()``, read on first use, when ``None``).
        transport: an httpx transport (``httpx.MockTransport`` in tests).
        retry: the retry policy (made from the settings on first use when ``None``).
        max_retries: overrides the settings' ``max_retries`` in that policy.
        base_url: the httpx client's base URL (relative paths resolve against it).
    """

    def __init__(
        self,
        origin: str,
        key: str | None,
        dialect: Dialect,
        *,
        settings: ComfySettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        base_url: str = "",
        timeout: float | httpx.Timeout | None = None,
    ) -> None:
        self.origin = origin
        self.dialect = dialect
        self._key = key or None
        self._settings = settings
        self._transport = transport
        self._retry = retry
        self._max_retries = max_retries
        self._base = base_url
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._closed = False
        self._origin_url: httpx.URL | None = None
        self._cleartext_ok = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(origin={self.origin!r})"

    # -- life -----------------------------------------------------------------------------------
    @property
    def settings(self) -> ComfySettings:
        """Timeouts, retries, limits (the environment is read on first use if none were given)."""
        if self._settings is None:
            self._settings = ComfySettings()
        return self._settings

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every request (the dialect's retryable statuses and transport errors)."""
        if self._retry is None:
            s = self.settings
            retries = s.max_retries if self._max_retries is None else self._max_retries
            self._retry = RetryPolicy(max_retries=retries, max_delay=s.retry_max_delay)
        return self._retry

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        self._retry = policy

    @property
    def closed(self) -> bool:
        """True after `aclose`."""
        return self._closed

    @property
    def client(self) -> httpx.AsyncClient:
        """The httpx client, made on first use (so building a session stays free of I/O and SSL).

        Raises:
            ComfyConfigError: the session was closed.
        """
        if self._closed:
            raise ComfyConfigError(f"This {type(self).__name__} is closed")
        if self._client is None:
            timeout = self._timeout
            if timeout is None:
                s = self.settings
                timeout = httpx.Timeout(s.request_timeout, connect=s.connect_timeout)
            self._client = httpx.AsyncClient(
                base_url=self._base,
                transport=self._transport,
                timeout=timeout,
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

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the key, and where it may go -----------------------------------------------------------
    def redact(self, text: str) -> str:
        """A text with the key (and any ``token=``/``api_key=`` or bearer value) removed."""
        return redact(text, [self._key])

    @property
    def origin_url(self) -> httpx.URL:
        """The origin as an ``httpx.URL``."""
        if self._origin_url is None:
            self._origin_url = httpx.URL(self.origin)
        return self._origin_url

    def key_allowed(self, url: str | httpx.URL) -> bool:
        """Whether a URL may carry the key: the server's origin, under the dialect's path prefix."""
        url = httpx.URL(str(url))
        if not same_origin(url, self.origin_url):
            return False
        prefix = self.dialect.key_path_prefix
        if prefix is None:
            return True
        path = unquote(url.path)
        if ".." in path.split("/"):
            return False
        return path == prefix or path.startswith(prefix + "/")

    def require_secure_key_transport(self) -> None:
        """Refuse to send the key in clear to a host that is not this machine (unless opted in).

        Call it before anything carries the key: every request does, and so does every WebSocket
        handshake.

        Raises:
            ComfyConfigError: ``http://`` to a host that is not loopback, and no opt-in.
        """
        if self._cleartext_ok or self._key is None:
            return
        url = self.origin_url
        if url.scheme in ("https", "wss") or is_loopback(url.host):
            self._cleartext_ok = True
            return
        if self.settings.allow_insecure_http:
            logger.warning(
                "Sending the %s API key in clear text to %s (allow_insecure_http is on)",
                self.dialect.name,
                self.origin,
            )
            self._cleartext_ok = True
            return
        raise ComfyConfigError(
            f"Refusing to send the API key to {self.origin} over plain http: anyone on the network "
            f"path could read it. Use https://{url.netloc.decode()} if the server offers it; if this "
            "network is trusted, opt in with allow_insecure_http=True on the block or "
            "COMFY_ALLOW_INSECURE_HTTP=1 in the environment."
        )

    # -- the one send ---------------------------------------------------------------------------
    def translating(self, request: httpx.Request) -> contextlib.AbstractContextManager[None]:
        """Transport errors inside become `ComfyTransportError` (for streamed bodies)."""
        return translating_transport_errors(request, [self._key], self.dialect.name)

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        with_key: bool = True,
        workflow: bool = False,
    ) -> httpx.Response:
        """Send one request; the key only where allowed; an error answer raises.

        Args:
            request: the request (built with `client`).
            stream: leave the body of a good answer unread (the caller closes the response).
            with_key: ``False`` for URLs that must never see the key, whatever their origin
                (presigned uploads).
            workflow: the request submits a workflow (a refusal becomes ``InvalidWorkflow``).

        Raises:
            ComfyError: the translated failure or error answer.
        """
        http = self.client  # raises if closed
        allowed = with_key and self._key is not None and self.key_allowed(request.url)
        if allowed:
            self.require_secure_key_transport()
            request.headers[self.dialect.key_header] = self.dialect.key_value(self._key or "")
        else:
            request.headers.pop(self.dialect.key_header, None)
        logger.debug("%s %s", request.method, self.redact(quiet_url(request.url)))
        with self.translating(request):
            response = await http.send(request, stream=True)
            if response.status_code >= 400:
                try:
                    content, _ = await read_capped(response, ERROR_BODY_LIMIT)
                finally:
                    await response.aclose()
                raise error_from_response(
                    request,
                    response,
                    secrets=[self._key],
                    key_allowed=allowed or self.key_allowed(request.url),
                    workflow=workflow,
                    dialect=self.dialect,
                    content=content,
                )
            if not stream:
                streamed = response
                try:
                    response = await self._read_body(request, streamed)
                finally:
                    await streamed.aclose()
        logger.debug("%s %s -> %s", request.method, quiet_url(request.url), response.status_code)
        return response

    async def _read_body(self, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        limit = self.settings.max_response_bytes
        content, more = await read_capped(response, limit)
        if more:
            raise ResponseTooLarge(
                f"{self.dialect.name} answered {request.method} {quiet_url(request.url)} with more "
                f"than {limit:,} bytes; the rest was not read. If the answer is right, raise "
                "COMFY_MAX_RESPONSE_BYTES (or ask for smaller pages)."
            )
        headers = [(k, v) for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS]
        return httpx.Response(
            response.status_code, headers=headers, content=content, request=request
        )

    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        what: str | None = None,
        retry: bool = True,
        workflow: bool = False,
        redirect_ok: bool = False,
        headers: dict[str, str] | None = None,
        body: Any = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One API call (its body read, at most ``max_response_bytes``), retried when ``retry``.

        Args:
            method: the HTTP method.
            url: absolute, or relative to the session's base URL.
            what: how log lines name the call (``"GET /jobs"``); the method and URL by default.
            retry: retry what the dialect and `is_retryable` allow.
            workflow: the call submits a workflow.
            redirect_ok: return a redirect answer as it is instead of raising (``HEAD`` probes).
            headers: extra headers.
            body: a callable ``(ExitStack) -> request kwargs`` run per attempt (files reopened).
            kwargs: more ``httpx.AsyncClient.build_request`` arguments (``params``, ``json`` …).

        Raises:
            ComfyAPIError: a redirect (unless ``redirect_ok``) or an error answer.
        """

        async def attempt() -> httpx.Response:
            with contextlib.ExitStack() as stack:
                extra = body(stack) if body is not None else {}
                request = self.client.build_request(method, url, headers=headers, **kwargs, **extra)
                response = await self.send(request, workflow=workflow)
            if response.is_redirect and not redirect_ok:
                raise redirect_error(request, response, self.dialect, self.origin, [self._key])
            return response

        if not retry:
            return await attempt()
        what = what or f"{method} {quiet_url(httpx.URL(str(url)))}"
        return await self.retry.call(attempt, what=what)

    call = request

    async def json(self, method: str, url: str | httpx.URL, **kwargs: Any) -> Any:
        """`request`, decoded (``None`` for an empty body).

        Raises:
            ComfyProtocolError: the body is not JSON.
        """
        response = await self.request(method, url, **kwargs)
        if not response.content:
            return None
        try:
            return decode_json(response.content)
        except (ValueError, UnicodeDecodeError):
            where = quiet_url(httpx.URL(str(url)))
            raise ComfyProtocolError(
                f"{self.dialect.name} answered {method} {where} with a body that is not JSON"
            ) from None
