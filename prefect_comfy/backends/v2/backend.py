"""Comfy API v2 (Comfy Cloud, serverless deployments, comfy-api-proxy) as a `ComfyBackend`.

REST calls go through `V2Http` (the package's one HTTP
session in the v2 dialect); one job's events come from its Server-Sent-Events stream
(`V2Backend.job_events`). v2 has no account-wide stream: `V2Backend.events` raises.

Two real servers' quirks are handled here, not passed on:

- a terminal ``status`` frame is confirmed with a read of the job before it is reported
  (comfy-api-proxy answers a transient false ``expired`` right after a fast job; an ``expired``
  is read again, backed off, for a few seconds: `stream`);
- a cancel the server acknowledges (``canceling``) is not reported as cancelled: ``canceling`` is
  ``running``, and the job's real end (``canceled``, or ``succeeded`` on a ComfyUI 0.3.75 behind
  the proxy, which never performs it) is what the stream and reads report.

Example:
    >>> backend = V2Backend("http://127.0.0.1:8189", "secret-doc-key")
    >>> backend.address, backend.kind, backend.capabilities.per_job_streams
    ('http://127.0.0.1:8189', 'v2', True)
    >>> "secret-doc-key" in backend.connection_key + repr(backend)
    False
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from prefect_comfy.backends.base import (
    Capabilities,
    ComfyBackend,
    Recent,
    Source,
    UnfinishedJobs,
    recent_from_pages,
)
from prefect_comfy.backends.v2 import mapping
from prefect_comfy.backends.v2.assets import MODEL_FOLDERS, upload_asset
from prefect_comfy.backends.v2.follow import (
    CLASSES,
    PAGE_SIZE,
    TAGS,
    UNFINISHED,
    list_page,
    list_unfinished,
    walk_pages,
)
from prefect_comfy.backends.v2.http import V2Http, is_code
from prefect_comfy.backends.v2.labels import KEY_LABEL, labels_for
from prefect_comfy.backends.v2.labels import metadata_text as _metadata_text
from prefect_comfy.backends.v2.stream import job_events
from prefect_comfy.bounded import Bounded
from prefect_comfy.exceptions import (
    ComfyAPIError,
    ComfyConfigError,
    ComfyProtocolError,
    InvalidRequest,
)
from prefect_comfy.models import ComfyEvent, Input, Job, Model, Output
from prefect_comfy.settings import ComfySettings, environment_value
from prefect_comfy.transport.download import download as stream_download
from prefect_comfy.transport.origins import normalize_origin

__all__ = ["V2Backend"]

logger = logging.getLogger(__name__)

_REMEMBERED = 4096
_SUBMITTED: Bounded = Bounded(_REMEMBERED)
"""(connection key, Idempotency-Key) -> job id, for submissions this process saw answered."""
_CLOUD_HOSTS = ("cloud.comfy.org",)
_TEXT_METADATA: set[str] = set()
"""Origins that take ``metadata`` only as one string (comfy-api-proxy 0.1.6): JSON text is sent."""


def _is_hosted(host: str) -> bool:
    return host in _CLOUD_HOSTS or host.endswith(".comfy.org") or host.endswith(".run.comfy.app")


class V2Backend(ComfyBackend):
    """A Comfy API v2 server reached with one key (or none, for an open proxy).

    Args:
        base_url: the origin: ``https://cloud.comfy.org``, ``https://<deployment>.run.comfy.app``
            or a comfy-api-proxy (``http://127.0.0.1:8189``).
        api_key: the secret key; required for Comfy Cloud and deployments.
        settings: timeouts, retries, limits (``ComfySettings()`` on first use when ``None``).
        transport: an httpx transport (tests).

    Raises:
        ComfyConfigError: a bad URL, or a Comfy-hosted server without a key.
    """

    kind: ClassVar[str] = "v2"
    capabilities: ClassVar[Capabilities] = Capabilities(
        upload_models=True,
        global_event_stream=False,
        find_jobs_by_tag=True,
        per_job_streams=True,
        list_jobs=True,
    )
    url_probe: ClassVar[tuple[str, frozenset[int]] | None] = ("/api/v2/health", frozenset({200}))
    key_variables: ClassVar[tuple[str, ...]] = ("COMFY_V2_API_KEY", "COMFY_API_KEY")

    @classmethod
    def at_url(cls, url: str, api_key: str | None = None) -> V2Backend:
        """A backend for the v2 server at ``url`` (the first of `key_variables` set, without
        ``api_key``)."""
        key = api_key or environment_value(*cls.key_variables)
        return cls(url, key)

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        settings: ComfySettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        catalog_source: str | None = None,
    ) -> None:
        self.catalog_source = catalog_source or (settings or ComfySettings()).catalog_source
        self._origin = normalize_origin(base_url.strip().rstrip("/").removesuffix("/api/v2"))
        host = httpx.URL(self._origin).host
        if api_key is None and _is_hosted(host):
            raise ComfyConfigError(
                f"Comfy API v2 at {self._origin} needs a secret key: set api_key on the "
                "ComfyV2Credentials block, or COMFY_V2_API_KEY (or COMFY_API_KEY)"
            )
        if _is_hosted(host):  # Comfy Cloud answers GET /api/v2/jobs with 501
            self.capabilities = Capabilities(  # type: ignore[misc]
                upload_models=True, per_job_streams=True, list_jobs=False
            )
        self._key = api_key
        self._settings = settings
        self._transport = transport
        self.http = V2Http(self._origin, api_key, settings=settings, transport=transport)
        digest = hashlib.sha256((api_key or "").encode()).hexdigest()
        self._connection_key = f"{self._origin}/api/v2#{digest[:16]}"

    @property
    def address(self) -> str:
        """The origin, such as ``https://cloud.comfy.org`` (no key, no path)."""
        return self._origin

    @property
    def connection_key(self) -> str:
        """``origin/api/v2#<first 16 hex digits of sha256(key)>``."""
        return self._connection_key

    def clone(self) -> V2Backend:
        return V2Backend(
            self._origin,
            self._key,
            settings=self._settings,
            transport=self._transport,
            catalog_source=self.catalog_source,
        )

    # -- jobs -------------------------------------------------------------------------------------
    def _metadata(self, tags: Sequence[str], key: str) -> dict[str, str]:
        return labels_for(tags, key)

    async def submit(
        self,
        workflow: dict[str, Any],
        *,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Job:
        """``POST /api/v2/jobs`` with metadata naming the Prefect run, its tags and the key.

        v2 refuses a reused ``Idempotency-Key`` (422 ``idempotency_key_reuse``) instead of
        replaying it. A submit with a key this process already saw answered returns that job; a
        refused key (a retry after an answer was lost) is looked up by the ``prefect_idempotency_key``
        metadata label where the server lists jobs. No second job is ever started.

        Raises:
            InvalidWorkflow: the graph was refused (``invalid_workflow`` names the node;
                ``workflow_format_ui``: export the graph in API format).
            InvalidRequest: the key was used before and the job cannot be found (Comfy Cloud
                cannot list): the message says so.
        """
        if not isinstance(workflow, dict):
            raise ComfyConfigError("A workflow is a dict of nodes (ComfyUI's API format)")
        key = idempotency_key or str(uuid.uuid4())
        known = _SUBMITTED.get((self._connection_key, key))
        if known is not None:
            return await self.get_job(known)
        try:
            raw = await self._post_job(workflow, self._metadata(tags, key), key)
        except InvalidRequest as exc:
            if not is_code(exc, "idempotency_key_reuse"):
                raise
            job = await self._find_submitted(key, exc)
        else:
            job = mapping.job_of(raw)
        if tags and not job.tags:  # comfy-api-proxy does not echo metadata on submit
            job = job.model_copy(update={"tags": list(tags)})
        _SUBMITTED.remember((self._connection_key, key), job.id)
        TAGS.remember(self._connection_key, job.id, job.tags)
        CLASSES.remember((self._connection_key, job.id), _shape_of(workflow))
        return job

    async def _post_job(self, workflow: dict[str, Any], metadata: dict[str, str], key: str) -> Any:
        """``POST /jobs``; metadata as labels, or as their JSON text where the server wants a string."""
        for _ in range(2):
            as_text = self._origin in _TEXT_METADATA
            sent: Any = _metadata_text(metadata) if as_text else metadata
            try:
                return await self.http.v2(
                    "POST",
                    "/jobs",
                    json={"workflow": workflow, "metadata": sent},
                    headers={"Idempotency-Key": key},
                    workflow=True,
                )
            except InvalidRequest as exc:
                # comfy-api-proxy checks metadata before it claims the key: sending again is safe.
                refused = "'metadata' must be a string" in str(exc)
                if as_text or not refused:
                    raise
                _TEXT_METADATA.add(self._origin)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _find_submitted(self, key: str, refused: InvalidRequest) -> Job:
        """The job an earlier attempt with ``key`` created (its answer was lost)."""
        try:
            found = await self._list_jobs({KEY_LABEL: key}, limit=1)
        except ComfyAPIError as exc:
            if exc.status_code != 501:
                raise
            found = None
        if found:
            logger.info("Found the job an earlier submit with this key created: %s", found[0].id)
            return found[0]
        why = (
            "this server cannot list jobs (HTTP 501, as on Comfy Cloud)"
            if found is None
            else "no job carries it"
        )
        raise InvalidRequest(
            f"Comfy API v2 at {self._origin} refused Idempotency-Key {key!r}: an earlier attempt "
            f"used it and its answer was lost, and the job it may have created cannot be found "
            f"({why}). No second job was started. Look for a job with metadata "
            f"{KEY_LABEL}={key} in the Comfy dashboard before running the task again with a new key.",
            status_code=refused.status_code,
            error_code="idempotency_key_reuse",
            details=refused.details,
        ) from None

    async def get_job(self, job_id: str) -> Job:
        job = mapping.job_of(await self.http.v2("GET", f"/jobs/{quote(job_id, safe='')}"))
        TAGS.remember(self._connection_key, job.id, job.tags)
        return job

    async def _tags_of(self, job_id: str) -> list[str]:
        """The job's tags: remembered (submitted, read or listed here), else read once."""
        known = TAGS.get(self._connection_key, job_id)
        return known if known is not None else (await self.get_job(job_id)).tags

    async def cancel(self, job_id: str) -> Job:
        """``POST /api/v2/jobs/{id}/cancel``; ``canceling`` comes back as ``running``.

        comfy-api-proxy on ComfyUI 0.3.75 acknowledges a cancel it never performs: the job then
        ends ``succeeded``, and that is what is reported.
        """
        return mapping.job_of(await self.http.v2("POST", f"/jobs/{quote(job_id, safe='')}/cancel"))

    async def outputs(self, job_id: str) -> list[Output]:
        return (await self.get_job(job_id)).outputs

    async def download(self, output: Output, dest: str | PathLike[str]) -> Path:
        """``GET /api/v2/assets/{id}/content``, its redirect to signed storage followed without the key."""
        url = httpx.URL(self._origin).join(
            output.download_url or f"/api/v2/assets/{quote(output.id, safe='')}/content"
        )
        return await stream_download(self.http, url, dest, output.name or output.id)

    async def _list_jobs(self, metadata: dict[str, str], limit: int | None = None) -> list[Job]:
        """Jobs carrying every label, pages of 100 (filtered here too: comfy-api-proxy 0.1.6
        ignores the ``metadata[...]`` filter and lists its newest jobs)."""
        jobs: list[Job] = []

        async def read(cursor: str | None, _: int) -> tuple[list[Job], str | None]:
            return await self.list_jobs_page(cursor, metadata=metadata)

        async for page in walk_pages(read, what=f"{metadata} on {self._origin}"):
            jobs.extend(page)
            if limit is not None and len(jobs) >= limit:
                break
        return jobs

    async def list_jobs_page(
        self,
        cursor: str | None = None,
        *,
        metadata: dict[str, str] | None = None,
        limit: int = PAGE_SIZE,
        status: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """One page of ``GET /api/v2/jobs``, newest first, and the next page's cursor.

        Raises:
            ComfyAPIError: 501 where the server cannot list jobs (Comfy Cloud).
        """
        jobs, next_cursor = await list_page(
            self.http, cursor=cursor, metadata=metadata, limit=limit, status=status
        )
        for job in jobs:
            TAGS.remember(self._connection_key, job.id, job.tags)
        return jobs, next_cursor

    async def unfinished_jobs(self, tag: str | None = None) -> list[Job] | None:
        """With a tag, ``GET /api/v2/jobs?metadata[tag:<tag>]=1`` keeping the unfinished ones;
        ``None`` without a tag (the waiting layer lists with `list_unfinished`) or where the
        server cannot list (Comfy Cloud answers 501)."""
        if tag is None or not self.capabilities.find_jobs_by_tag:
            return None
        try:
            jobs = await self._list_jobs({f"{mapping.TAG_PREFIX}{tag}"[:128]: "1"})
        except ComfyAPIError as exc:
            if exc.status_code == 501:
                return None
            raise
        return [job for job in jobs if not job.is_terminal]

    async def list_unfinished(self, *, max_requests: int | None = None) -> UnfinishedJobs | None:
        """The unfinished jobs, ``GET /api/v2/jobs?status=queued,running,canceling`` page by page,
        at most ``max_requests`` pages (see `follow.list_unfinished`); ``None`` where the server
        cannot list (Comfy Cloud answers 501) or refuses the ``status`` filter."""
        if not self.capabilities.list_jobs:
            return None

        async def read(cursor: str | None) -> tuple[list[Job], str | None]:
            return await self.list_jobs_page(cursor, status=UNFINISHED)

        return await list_unfinished(read, origin=self._origin, max_requests=max_requests)

    # -- uploads ----------------------------------------------------------------------------------
    def _ready(self, asset: Any, file_path: str, tags: Sequence[str]) -> dict[str, Any]:
        if not isinstance(asset, dict) or not isinstance(asset.get("id"), str | int):
            raise ComfyProtocolError(
                f"Comfy API v2 answered {str(asset)[:200]!r} where an asset was expected"
            )
        size = asset.get("size_bytes")
        if size is not None and not isinstance(size, int):
            raise ComfyProtocolError(f"Comfy API v2 answered an asset size {str(size)[:40]!r}")
        return {
            "id": str(asset.get("id")),
            "name": asset.get("file_path") or file_path,
            "status": "ready",
            "size": asset.get("size_bytes") or None,
            "mime_type": asset.get("content_type"),
            "tags": list(asset.get("tags") or tags),
            "created_at": asset.get("created_at"),
        }

    async def upload_input(
        self,
        source: Source,
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Input:
        """An asset at ``name`` (by blake3 hash first); ready when this returns.

        Refer to it in a workflow by name (the proxy and the emulator place it there) or with
        `asset_reference`. ``idempotency_key`` is not
        sent: uploads are idempotent by content hash.
        """
        file_path = _file_name(source, name)
        asset = await upload_asset(self.http, source, file_path=file_path, tags=["input", *tags])
        return Input(**self._ready(asset, file_path, tags))

    async def upload_model(
        self,
        source: Source,
        *,
        type: str,
        name: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Model:
        """An asset at ``models/<folder of type>/<name>``; ready when this returns."""
        folder = MODEL_FOLDERS.get(type)
        if folder is None:
            raise ComfyConfigError(
                f"Unknown model type {type!r}: use one of {', '.join(MODEL_FOLDERS)}"
            )
        bare = _file_name(source, name)
        file_path = f"models/{folder}/{bare}"
        asset = await upload_asset(self.http, source, file_path=file_path, tags=["models", *tags])
        return Model(**self._ready(asset, file_path, tags), type=type)

    async def get_input(self, input_id: str) -> Input:
        asset = await self.http.v2("GET", f"/assets/{quote(input_id, safe='')}")
        return Input(**self._ready(asset, _asset_path(asset, input_id), ()))

    async def get_model(self, model_id: str) -> Model:
        asset = await self.http.v2("GET", f"/assets/{quote(model_id, safe='')}")
        return Model(**self._ready(asset, _asset_path(asset, model_id), ()))

    # -- events (no account-wide stream: ComfyBackend.events stays unimplemented) ----------------
    async def recent(
        self, since: datetime, *, limit: int, kinds: Sequence[str] = ("job", "input", "model")
    ) -> list[Recent] | None:
        """``GET /api/v2/jobs`` cursor pages, newest first (jobs only: a v2 upload is ready when its
        upload call returns); ``None`` where the server does not list (Comfy Cloud answers 501)."""
        if "job" not in kinds or not self.capabilities.list_jobs:
            return None if not self.capabilities.list_jobs else []

        async def read(cursor: str | None) -> tuple[list[Job], str | None]:
            return await self.list_jobs_page(cursor)

        try:
            return await recent_from_pages("job", read, since, limit=limit)
        except ComfyAPIError as exc:
            if exc.status_code == 501:
                return None
            raise

    def job_events(self, job_id: str) -> AsyncIterator[ComfyEvent]:
        """``GET /api/v2/jobs/{id}/events``: ``job.progress`` per snapshot (with the job's tags, as
        on the other backends), then the confirmed terminal event (see `job_events`).

        Raises:
            TooManyStreams: 429 ``too_many_streams``; ``retry_after`` says when to try again.
        """
        classes, needs = CLASSES.get((self._connection_key, job_id)) or (None, None)
        return job_events(
            self.http, self.get_job, job_id, tags_of=self._tags_of, classes=classes, needs=needs
        )

    async def aclose(self) -> None:
        await self.http.aclose()


def _asset_path(asset: Any, fallback: str) -> str:
    return str((asset.get("file_path") if isinstance(asset, dict) else None) or fallback)


def _shape_of(workflow: dict[str, Any]) -> tuple[dict[str, str], dict[str, set[str]]]:
    """What a job's progress is counted against: node id -> class_type, and node id -> the node
    ids its inputs come from (a link is ``[node id, output index]`` in the API format)."""
    classes: dict[str, str] = {}
    needs: dict[str, set[str]] = {}
    for node_id, node in workflow.items():
        if not isinstance(node, dict):
            continue
        classes[str(node_id)] = str(node.get("class_type") or "")
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        needs[str(node_id)] = {
            str(value[0])
            for value in inputs.values()
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in workflow
        }
    return classes, needs


def _file_name(source: Source, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, bytes):
        raise ComfyConfigError("Uploading bytes needs a name= (the file name workflows use)")
    return Path(source).name
