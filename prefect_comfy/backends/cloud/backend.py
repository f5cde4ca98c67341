"""The Comfy Cloud developer API (and the local emulator) as a `ComfyBackend`.

REST calls go through `ComfyClient`; the event stream through
`ComfyWebSocket`.

Example:
    >>> backend = CloudBackend("comfyui-doc", "http://127.0.0.1:8765")
    >>> backend.address, backend.kind
    ('http://127.0.0.1:8765', 'cloud')
    >>> "comfyui-doc" in backend.connection_key + repr(backend)
    False
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
from pydantic import SecretStr

from prefect_comfy.backends.base import (
    Capabilities,
    ComfyBackend,
    ConnectCallback,
    DisconnectCallback,
    PageReader,
    Recent,
    Source,
    UnfinishedJobs,
    recent_from_pages,
)
from prefect_comfy.backends.cloud.rest import ComfyClient
from prefect_comfy.models import ComfyEvent, Input, Job, Model, Output
from prefect_comfy.settings import API_PREFIX, ComfySettings
from prefect_comfy.transport.reconnect import FOREVER

PAGE_SIZE = 100
"""Jobs per page when listing (the API's largest ``limit``)."""
PAGE_CONCURRENCY = 8
"""Most pages of one listing read at once (the API pages by offset, so every page is known
once the first has said the total)."""


class CloudBackend(ComfyBackend):
    """Comfy Cloud's developer API, reached with one API key.

    Args:
        api_key: the key; defaults to ``COMFY_API_KEY``.
        base_url: the origin; defaults to ``COMFY_BASE_URL`` (``https://cloud.comfy.org``).
        settings: where unset values come from (``ComfySettings()`` if omitted).
        ws_auth: how the event stream's handshake carries the key, ``"header"`` or ``"query"``;
            defaults to ``COMFY_WS_AUTH``.
        transport: an httpx transport for the REST client (tests).

    Raises:
        ComfyConfigError: no API key, or a bad base URL.
    """

    kind: ClassVar[str] = "cloud"
    capabilities: ClassVar[Capabilities] = Capabilities(
        upload_models=True, global_event_stream=True, find_jobs_by_tag=True
    )
    url_probe: ClassVar[tuple[str, frozenset[int]] | None] = (
        API_PREFIX + "/jobs",
        frozenset({200, 401, 403}),
    )
    key_variables: ClassVar[tuple[str, ...]] = ("COMFY_API_KEY",)

    @classmethod
    def at_url(cls, url: str, api_key: str | None = None) -> CloudBackend:
        """A backend for the developer API at ``url`` (``COMFY_API_KEY`` without ``api_key``)."""
        return cls(api_key=api_key, base_url=url)

    async def recent(
        self, since: datetime, *, limit: int, kinds: Sequence[str] = ("job", "input", "model")
    ) -> list[Recent]:
        """``GET /jobs``, ``/inputs`` and ``/models``, offset pages of 100, newest first."""
        listers = {
            "job": self.client.list_jobs,
            "input": self.client.list_inputs,
            "model": self.client.list_models,
        }
        found: list[Recent] = []
        for kind in kinds:
            found += await recent_from_pages(
                kind,  # type: ignore[arg-type]
                _offset_pages(listers[kind]),
                since,
                limit=limit,
            )
        return found

    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        *,
        settings: ComfySettings | None = None,
        ws_auth: Literal["header", "query"] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings if settings is not None else ComfySettings()
        self.client = ComfyClient(api_key, base_url, settings=self.settings, transport=transport)
        self.ws_auth: Literal["header", "query"] = ws_auth or self.settings.ws_auth
        self._transport = transport
        digest = hashlib.sha256(self.client.api_key.get_secret_value().encode()).hexdigest()
        self._connection_key = f"{self.client.base_url}#{digest[:16]}"
        self.catalog_source = self.settings.catalog_source

    @property
    def address(self) -> str:
        """The origin, such as ``https://cloud.comfy.org`` (no key, no path)."""
        return self.client.base_url

    @property
    def connection_key(self) -> str:
        """``address#<first 16 hex digits of sha256(key)>``: equal for equal credentials."""
        return self._connection_key

    def clone(self) -> CloudBackend:
        """A new backend with the same key, address, settings, ``ws_auth`` and transport."""
        return CloudBackend(
            self.client.api_key,
            self.client.base_url,
            settings=self.settings,
            ws_auth=self.ws_auth,
            transport=self._transport,
        )

    # -- jobs -------------------------------------------------------------------------------------
    async def submit(
        self,
        workflow: dict[str, Any],
        *,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Job:
        return await self.client.create_job(workflow, tags=tags, idempotency_key=idempotency_key)

    async def get_job(self, job_id: str) -> Job:
        return await self.client.get_job(job_id)

    async def cancel(self, job_id: str) -> Job:
        return await self.client.cancel_job(job_id)

    async def outputs(self, job_id: str) -> list[Output]:
        return await self.client.job_outputs(job_id)

    async def download(self, output: Output, dest: str | PathLike[str]) -> Path:
        return await self.client.download(output, dest)

    # -- uploads ----------------------------------------------------------------------------------
    async def upload_input(
        self,
        source: Source,
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Input:
        return await self.client.upload_input(
            source, name=name, tags=tags, idempotency_key=idempotency_key
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
        return await self.client.upload_model(
            source, type=type, name=name, tags=tags, idempotency_key=idempotency_key
        )

    async def get_input(self, input_id: str) -> Input:
        return await self.client.get_input(input_id)

    async def get_model(self, model_id: str) -> Model:
        return await self.client.get_model(model_id)

    async def unfinished_jobs(self, tag: str | None = None) -> list[Job] | None:
        """Pending and running jobs, in pages of 100: ``GET /jobs?tags=<tag>`` keeping the jobs not
        yet ended, or without a tag ``GET /jobs?status=pending`` then ``status=running``."""
        if tag is not None:
            return [job async for job in self.client.iter_jobs(tags=[tag]) if not job.is_terminal]
        found: list[Job] = []
        for status in ("pending", "running"):
            found.extend([job async for job in self.client.iter_jobs(status=status, page_size=100)])
        return found

    async def list_unfinished(self, *, max_requests: int | None = None) -> UnfinishedJobs | None:
        """Pending then running jobs, in pages of 100, read `PAGE_CONCURRENCY` at a time.

        The first page of pending jobs says how many there are: when the whole listing (the
        pending pages and at least one of running jobs) would take more than ``max_requests``
        requests, it stops there with ``complete=False``. A job that moves between pages while
        they are read can be missed; the caller reads what it did not find.
        """
        first = await self.client.list_jobs(status="pending", limit=PAGE_SIZE)
        jobs: list[Job] = list(first.items)
        pages = math.ceil(first.total / PAGE_SIZE)
        if max_requests is not None and max(pages, 1) + 1 > max_requests:
            return UnfinishedJobs(jobs, complete=False, requests=1, backlog=first.total)
        limit = asyncio.Semaphore(PAGE_CONCURRENCY)

        async def page(status: str, number: int) -> list[Job]:
            async with limit:
                answer = await self.client.list_jobs(
                    status=status, offset=number * PAGE_SIZE, limit=PAGE_SIZE
                )
            return list(answer.items)

        running = asyncio.ensure_future(self.client.list_jobs(status="running", limit=PAGE_SIZE))
        try:
            for found in await asyncio.gather(*(page("pending", n) for n in range(1, pages))):
                jobs.extend(found)
            first_running = await running
        finally:
            running.cancel()
        jobs.extend(first_running.items)
        more = math.ceil(first_running.total / PAGE_SIZE)
        for found in await asyncio.gather(*(page("running", n) for n in range(1, more))):
            jobs.extend(found)
        return UnfinishedJobs(
            jobs,
            requests=max(pages, 1) + max(more, 1),
            backlog=first.total + first_running.total,
        )

    # -- the event stream -------------------------------------------------------------------------
    async def events(
        self,
        patterns: Sequence[str] = ("*",),
        *,
        on_connect: ConnectCallback | None = None,
        on_disconnect: DisconnectCallback | None = None,
        forever: bool = False,
    ) -> AsyncIterator[ComfyEvent]:
        """Events matching ``patterns`` over one `ComfyWebSocket`, across reconnects.

        ``on_connect`` and ``on_disconnect`` are passed to the socket: the first runs as a task
        after every (re)subscribe, the second is awaited when a subscribed connection drops,
        before the reconnect. ``forever``: the socket's reconnect budget never runs out.
        """
        from prefect_comfy.backends.cloud.ws import ComfyWebSocket

        self.client.require_secure_key_transport()  # the handshake carries the key too
        s = self.settings
        async with ComfyWebSocket(
            api_key=self.client.api_key.get_secret_value(),
            base_url=self.client.base_url,
            auto_reconnect=True,
            max_reconnect_attempts=FOREVER if forever else s.max_reconnect_attempts,
            reconnect_delay=s.reconnect_delay,
            max_reconnect_delay=s.max_reconnect_delay,
            auth=self.ws_auth,
            settings=s,
            ping_interval=s.ping_interval,
            ping_timeout=s.ping_timeout,
            on_connect=on_connect,
            on_disconnect=on_disconnect,
        ) as ws:
            await ws.subscribe(list(patterns))
            async for event in ws.events():
                yield event

    # -- life -------------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the REST client. Safe to call twice."""
        await self.client.aclose()


def _offset_pages(lister: Callable[..., Awaitable[Any]]) -> PageReader:
    """The developer API's offset/limit pages as the page tokens of ``recent_from_pages``."""

    async def read(offset: int | None) -> tuple[list[Any], int | None]:
        page = await lister(offset=offset or 0, limit=RECENT_PAGE)
        items = list(page.items)
        return items, ((offset or 0) + len(items) if page.has_more and items else None)

    return read


RECENT_PAGE = 100
"""Page size of the listings that catching up reads."""
