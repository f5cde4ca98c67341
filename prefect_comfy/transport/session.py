"""The HTTP core under :class:`~prefect_comfy.backends.cloud.rest.ComfyClient`: one lazy httpx client, one send.

:class:`RestSession` holds the configuration (key, origin, timeouts, retry policy), decides which
URLs may carry the key (:meth:`RestSession.is_api_url`), and sends every request through
:meth:`RestSession._send`, where failures become the package's error tree
(:mod:`prefect_comfy.transport.errors`). :meth:`RestSession._call` adds retries and JSON decoding.

Building a session does no I/O and loads no certificates: the ``httpx.AsyncClient`` is made on the
first request, and every client in the process shares one SSL context
(:func:`shared_ssl_context`), so making a client (or a backend) per task costs microseconds.

Example:
    >>> session = RestSession("comfyui-doc", "https://cloud.comfy.org/developer/api/v1/")
    >>> session.api_url, session.is_api_url("https://storage.test/file.png")
    ('https://cloud.comfy.org/developer/api/v1', False)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import httpx
from pydantic import BaseModel, SecretStr, ValidationError

from prefect_comfy.exceptions import ComfyConfigError, ComfyProtocolError
from prefect_comfy.models import Page
from prefect_comfy.redaction import redact
from prefect_comfy.settings import API_PREFIX, ComfySettings
from prefect_comfy.transport.errors import (
    error_from_response,
    quiet_url,
    translating_transport_errors,
)
from prefect_comfy.transport.retry import RetryPolicy

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
S = TypeVar("S", bound="RestSession")

USER_AGENT = "prefect-comfy"

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """The process's one SSL context for Comfy's HTTPS clients (loading one costs ~30 ms).

    Made on first use with httpx's defaults (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR`` as set
    then); pass it as ``verify=`` to any ``httpx.AsyncClient`` that talks to Comfy.
    """
    return httpx.create_ssl_context()


def normalize_origin(base_url: str) -> str:
    """The origin of a base URL: trailing ``/`` and ``/developer/api/v1`` removed, scheme checked.

    Example:
        >>> normalize_origin("https://cloud.comfy.org/developer/api/v1/")
        'https://cloud.comfy.org'

    Raises:
        ComfyConfigError: the URL is not ``http(s)://host[:port]``.
    """
    value = str(base_url).strip().rstrip("/")
    if value.endswith(API_PREFIX):
        value = value[: -len(API_PREFIX)]
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ComfyConfigError(f"Invalid Comfy base URL {value!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ComfyConfigError(
            f"Invalid Comfy base URL {value!r}: expected http(s)://host[:port], such as "
            "https://cloud.comfy.org"
        )
    return value


def _port(url: httpx.URL) -> int | None:
    return url.port or _DEFAULT_PORTS.get(url.scheme)


def segment(resource_id: str) -> str:
    """A resource id as one path segment (an id never reaches another path)."""
    return quote(str(resource_id), safe="")


def csv(tags: Sequence[str] | str | None) -> str | None:
    """Tags as the API's comma-separated query value (``None`` for none)."""
    if tags is None:
        return None
    if isinstance(tags, str):
        return tags or None
    return ",".join(tags) or None


class RestSession:
    """Configuration, key scoping and the one send of the REST client (see :class:`ComfyClient`).

    Raises:
        ComfyConfigError: no API key, or a base URL that is not ``http(s)://host``.
    """

    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        *,
        settings: ComfySettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        settings = settings if settings is not None else ComfySettings()
        key = api_key if api_key is not None else settings.api_key
        if isinstance(key, str):
            key = SecretStr(key)
        if key is None or not key.get_secret_value().strip():
            raise ComfyConfigError(
                "No Comfy API key: set COMFY_API_KEY or pass api_key (or use a credentials block)"
            )
        self._api_key = key
        self._secret = key.get_secret_value()
        self.settings = settings
        self.base_url = normalize_origin(base_url or settings.base_url)
        self.api_url = self.base_url + API_PREFIX
        self._api = httpx.URL(self.api_url)
        self._api_root = httpx.URL(self.api_url + "/")
        if timeout is None:
            timeout = httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout)
        self._timeout = timeout
        self._transport = transport
        self.retry = retry or RetryPolicy(
            max_retries=settings.max_retries if max_retries is None else max_retries,
            max_delay=settings.retry_max_delay,
        )
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    # -- life -----------------------------------------------------------------------------------
    @property
    def api_key(self) -> SecretStr:
        """The key, as a ``SecretStr``."""
        return self._api_key

    @property
    def closed(self) -> bool:
        """True after :meth:`aclose`."""
        return self._closed

    @property
    def _http(self) -> httpx.AsyncClient:
        """The httpx client, made on first use (building a session stays free of I/O and SSL)."""
        if self._closed:
            raise ComfyConfigError(f"This {type(self).__name__} is closed")
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.api_url,
                transport=self._transport,
                timeout=self._timeout,
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

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # -- where the key may go -------------------------------------------------------------------
    def is_api_url(self, url: str | httpx.URL) -> bool:
        """Whether a URL may carry the key: same origin as the API and a path under its prefix."""
        url = httpx.URL(str(url))
        if (url.scheme, url.host, _port(url)) != (
            self._api.scheme,
            self._api.host,
            _port(self._api),
        ):
            return False
        path = unquote(url.path)
        if ".." in path.split("/"):
            return False
        return path == API_PREFIX or path.startswith(API_PREFIX + "/")

    def _headers(self, url: httpx.URL, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.is_api_url(url):
            headers["Authorization"] = f"Bearer {self._secret}"
        return headers

    def _redact(self, text: str) -> str:
        return redact(text, [self._secret])

    # -- the one place where failures are translated ---------------------------------------------
    def _translating(self, request: httpx.Request) -> contextlib.AbstractContextManager[None]:
        """Transport errors inside become :class:`ComfyTransportError` (for streamed bodies)."""
        return translating_transport_errors(request, [self._secret])

    async def _send(
        self, request: httpx.Request, *, stream: bool = False, workflow: bool = False
    ) -> httpx.Response:
        """Send one request; transport failures and HTTP errors become the package's error tree."""
        http = self._http  # raises if closed
        logger.debug("%s %s", request.method, self._redact(quiet_url(request.url)))
        with self._translating(request):
            response = await http.send(request, stream=stream)
            if response.status_code >= 400:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                raise error_from_response(
                    request,
                    response,
                    secrets=[self._secret],
                    key_allowed=self.is_api_url(request.url),
                    workflow=workflow,
                )
        logger.debug("%s %s -> %s", request.method, quiet_url(request.url), response.status_code)
        return response

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        body: Callable[[contextlib.ExitStack], dict[str, Any]] | None = None,
        idempotency_key: str | None = None,
        workflow: bool = False,
    ) -> Any:
        """One API call with retries; returns the decoded JSON body (``None`` when empty)."""
        url = self._api_root.join(path.lstrip("/"))
        extra = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        query = {k: v for k, v in (params or {}).items() if v is not None}

        async def attempt() -> httpx.Response:
            with contextlib.ExitStack() as stack:
                request = self._http.build_request(
                    method,
                    url,
                    params=query or None,
                    json=json,
                    headers=self._headers(url, extra),
                    **(body(stack) if body else {}),
                )
                return await self._send(request, workflow=workflow)

        response = await self.retry.call(attempt, what=f"{method} {path}")
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ComfyProtocolError(
                f"Comfy answered {method} {path} with a body that is not JSON"
            ) from None

    # -- answers --------------------------------------------------------------------------------
    @staticmethod
    def _parse(model: type[M], data: Any) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ComfyProtocolError(
                f"Comfy answered with a {model.__name__} that does not fit: {exc.errors()[:3]}"
            ) from None

    def _page(self, data: Any, key: str, model: type[BaseModel]) -> Page:
        if not isinstance(data, dict):
            raise ComfyProtocolError(f"Comfy answered a list of {key} that is not an object")
        raw = data.get(key)
        if raw is None:
            raw = data.get("items", data.get("data", []))
        items = [self._parse(model, item) for item in raw]
        return Page(
            items=items,
            total=int(data.get("total", len(items))),
            has_more=bool(data.get("has_more", False)),
        )

    @staticmethod
    async def _iterate(
        fetch: Callable[[int, int], Awaitable[Page]], page_size: int
    ) -> AsyncIterator[Any]:
        offset = 0
        while True:
            page = await fetch(offset, page_size)
            for item in page.items:
                yield item
            offset += len(page.items)
            if not page.has_more or not page.items:
                return
