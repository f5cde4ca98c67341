"""The developer API's session: `HttpSession` in the Cloud dialect.

`RestSession` holds the configuration of `ComfyClient`
(key, origin, timeouts, retry policy) and adds what the developer API needs on top of the one HTTP
session: calls by path under ``/developer/api/v1`` with an ``Idempotency-Key``, typed answers and
lenient pages that fail with the package's own `ComfyProtocolError`
whatever shape the server sends. Key scoping, redirects, size caps, insecure-http refusal and error
translation are the shared session's (`prefect_comfy.transport.http`).

Example:
    >>> session = RestSession("comfyui-doc", "https://cloud.comfy.org/developer/api/v1/")
    >>> session.api_url, session.is_api_url("https://storage.test/file.png")
    ('https://cloud.comfy.org/developer/api/v1', False)
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, SecretStr, ValidationError

from prefect_comfy.exceptions import ComfyConfigError, ComfyProtocolError
from prefect_comfy.models import Page
from prefect_comfy.settings import API_PREFIX, ComfySettings
from prefect_comfy.transport.errors import CLOUD_DIALECT
from prefect_comfy.transport.http import USER_AGENT, HttpSession
from prefect_comfy.transport.origins import normalize_origin, shared_ssl_context
from prefect_comfy.transport.retry import RetryPolicy

__all__ = [
    "USER_AGENT",
    "RestSession",
    "csv",
    "normalize_origin",
    "segment",
    "shared_ssl_context",
]

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


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


class RestSession(HttpSession):
    """Configuration and the calls by path of the REST client (see `ComfyClient`).

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
        self.base_url = normalize_origin(base_url or settings.base_url)
        self.api_url = self.base_url + API_PREFIX
        self._api_root = httpx.URL(self.api_url + "/")
        super().__init__(
            self.base_url,
            self._secret,
            CLOUD_DIALECT,
            settings=settings,
            transport=transport,
            retry=retry,
            max_retries=max_retries,
            base_url=self.api_url,
            timeout=timeout,
        )

    @property
    def api_key(self) -> SecretStr:
        """The key, as a ``SecretStr``."""
        return self._api_key

    @property
    def _http(self) -> httpx.AsyncClient:
        """The httpx client, made on first use (building a session stays free of I/O and SSL)."""
        return self.client

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def is_api_url(self, url: str | httpx.URL) -> bool:
        """Whether a URL may carry the key: same origin as the API and a path under its prefix."""
        return self.key_allowed(url)

    # -- calls by path ----------------------------------------------------------------------------
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
        return await self.json(
            method,
            url,
            params=query or None,
            json=json,
            headers=extra,
            body=body,
            workflow=workflow,
            what=f"{method} {path}",
        )

    # -- answers --------------------------------------------------------------------------------
    @staticmethod
    def _parse(model: type[M], data: Any) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ComfyProtocolError(
                f"Comfy answered with a {model.__name__} that does not fit: {_errors(exc)}"
            ) from None

    def _page(self, data: Any, key: str, model: type[BaseModel]) -> Page:
        if not isinstance(data, dict):
            raise ComfyProtocolError(f"Comfy answered a list of {key} that is not an object")
        raw = data.get(key)
        if raw is None:
            raw = data.get("items", data.get("data", []))
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise ComfyProtocolError(
                f"Comfy answered a list of {key} whose {key!r} is a {type(raw).__name__}, "
                "not a list"
            )
        items = [self._parse(model, item) for item in raw]
        return Page(
            items=items,
            total=_count(data.get("total"), len(items), key),
            has_more=_flag(data.get("has_more"), key),
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


def _errors(exc: ValidationError) -> str:
    """The first few validation errors, short (a hostile body can make them long)."""
    return str([(e.get("loc"), e.get("msg")) for e in exc.errors()[:3]])[:300]


def _count(value: Any, default: int, key: str) -> int:
    """A page's ``total``: absent or ``null`` means the items given; anything else must be a count."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ComfyProtocolError(
            f"Comfy answered a list of {key} with a 'total' that is not a number"
        )
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise ComfyProtocolError(
            f"Comfy answered a list of {key} with a 'total' that is not a count"
        )
    if value < 0:
        raise ComfyProtocolError(f"Comfy answered a list of {key} with a negative 'total'")
    return int(value)


def _flag(value: Any, key: str) -> bool:
    if value is None:
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if not isinstance(value, bool):
        raise ComfyProtocolError(
            f"Comfy answered a list of {key} with a 'has_more' that is not true/false"
        )
    return value
