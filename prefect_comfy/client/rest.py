"""The async REST client of the Comfy developer API.

:class:`ComfyClient` wraps one :class:`httpx.AsyncClient` with an explicit life (``async with`` or
:meth:`ComfyClient.aclose`), a transport seam (``httpx.MockTransport`` in unit tests), typed answers
(:mod:`prefect_comfy.models`) and one place where HTTP and transport failures become the package's
error tree (:meth:`ComfyClient._send`). Failed calls that :func:`~prefect_comfy.exceptions.is_retryable`
allows (429, 5xx, transport errors) are retried by :class:`~prefect_comfy.client.retry.RetryPolicy`;
creating calls always carry an ``Idempotency-Key`` so a retry replays instead of duplicating.

The API key travels only in the ``Authorization`` header, and only to URLs under the API base
(same origin, path under ``/developer/api/v1``); signed storage URLs and presigned uploads never see it.

Example:
    >>> import asyncio, httpx
    >>> def handler(request):
    ...     return httpx.Response(200, json={"id": "job_1", "status": "running"})
    >>> async def main():
    ...     async with ComfyClient("comfyui-doc", "http://127.0.0.1:8765",
    ...                            transport=httpx.MockTransport(handler)) as client:
    ...         return (await client.get_job("job_1")).status
    >>> asyncio.run(main())
    'running'
"""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import httpx
from pydantic import BaseModel, SecretStr, ValidationError

from prefect_comfy.client.retry import RetryPolicy, parse_retry_after
from prefect_comfy.exceptions import (
    AuthenticationError,
    ComfyAPIError,
    ComfyConfigError,
    ComfyError,
    ComfyProtocolError,
    ComfyTransportError,
    InvalidRequest,
    InvalidWorkflow,
    NotFound,
    RateLimited,
    ServerError,
)
from prefect_comfy.models import (
    Input,
    Job,
    JobBatch,
    Model,
    Output,
    Page,
    UploadUrl,
    WorkflowValidation,
)
from prefect_comfy.redaction import redact
from prefect_comfy.settings import API_PREFIX, ComfySettings

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

Source = str | PathLike[str] | bytes
"""An upload: a path to a file, or the bytes themselves (then ``name`` is required)."""

MAX_BATCH = 50
"""The most jobs one ``POST /jobs/batch`` takes."""
MAX_REDIRECTS = 5
"""Redirects a download follows (each hop decides afresh whether it may carry the key)."""
CHUNK_SIZE = 1 << 16
"""Bytes read or written at a time when streaming files."""
USER_AGENT = "prefect-comfy"

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


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


def _quiet_url(url: httpx.URL) -> str:
    """A URL fit for a log line: no query string (signed URLs carry tokens there)."""
    return str(url.copy_with(query=None, fragment=None))


def _seg(resource_id: str) -> str:
    """A resource id as one path segment (an id never reaches another path)."""
    return quote(str(resource_id), safe="")


def _csv(tags: Sequence[str] | str | None) -> str | None:
    if tags is None:
        return None
    if isinstance(tags, str):
        return tags or None
    return ",".join(tags) or None


def _error_fields(response: httpx.Response) -> tuple[str | None, str, list[Any]]:
    """``(code, message, details)`` from an error body; lenient about shape (and non-JSON bodies)."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        text = response.text.strip() if response.content else ""
        return None, (text[:300] or response.reason_phrase or "no error body"), []
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, str):
        return None, error, []
    if not isinstance(error, dict):
        return None, str(error)[:300], []
    code = error.get("code") or error.get("type")
    message = error.get("message") or error.get("detail") or response.reason_phrase or ""
    details = error.get("details") or []
    if isinstance(details, dict):
        # ComfyUI-style node errors keyed by node id.
        details = [
            {"node_id": str(k), **(v if isinstance(v, dict) else {"message": str(v)})}
            for k, v in details.items()
        ]
    elif not isinstance(details, list):
        details = [details]
    return (str(code) if code else None), str(message), details


def _node_errors(details: list[Any]) -> list[dict[str, Any]]:
    errors = []
    for item in details:
        if isinstance(item, dict):
            entry = dict(item)
            if entry.get("node_id") is not None:
                entry["node_id"] = str(entry["node_id"])
            entry.setdefault("message", "")
            errors.append(entry)
        else:
            errors.append({"node_id": None, "message": str(item)})
    return errors


class ComfyClient:
    """An async client of the Comfy developer API (``{base_url}/developer/api/v1``).

    Args:
        api_key: the key (``comfyui-…``); defaults to ``COMFY_API_KEY``.
        base_url: the origin, such as ``https://cloud.comfy.org`` or ``http://127.0.0.1:8765``;
            defaults to ``COMFY_BASE_URL``.
        settings: where unset values come from; ``ComfySettings()`` (the environment) if omitted.
        transport: an httpx transport (``httpx.MockTransport`` in tests).
        timeout: seconds or an ``httpx.Timeout``; defaults to the settings' request/connect timeouts.
        max_retries: retries of one call after 429, 5xx or a transport error.
        retry: a full :class:`RetryPolicy` (overrides ``max_retries``), e.g. with a sleep that
            does not wait, for tests.

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
        if timeout is None:
            timeout = httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout)
        self.retry = retry or RetryPolicy(
            max_retries=settings.max_retries if max_retries is None else max_retries,
            max_delay=settings.retry_max_delay,
        )
        self._http = httpx.AsyncClient(
            base_url=self.api_url,
            transport=transport,
            timeout=timeout,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            follow_redirects=False,
        )
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

    async def aclose(self) -> None:
        """Close the connection pool. Safe to call twice."""
        self._closed = True
        await self._http.aclose()

    async def __aenter__(self) -> ComfyClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"ComfyClient(base_url={self.base_url!r})"

    # -- the one place where failures are translated ----------------------------------------------
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

    def _error(
        self, request: httpx.Request, response: httpx.Response, workflow: bool
    ) -> ComfyError:
        status = response.status_code
        code, message, details = _error_fields(response)
        message = self._redact(message)
        where = f"{request.method} {self._redact(_quiet_url(request.url))}"
        text = f"Comfy API error on {where}: HTTP {status}" + (f" [{code}]" if code else "")
        text += f": {message}" if message else ""
        fields: dict[str, Any] = {"status_code": status, "error_code": code, "details": details}
        if status in (401, 403) and not self.is_api_url(request.url):
            # Signed storage: a 403 there is an expired URL, not a wrong key.
            return ComfyAPIError(text, **fields)
        if status in (401, 403):
            return AuthenticationError(
                f"Comfy rejected the API key (HTTP {status}): check COMFY_API_KEY or the "
                "credentials block",
                **fields,
            )
        if status == 404:
            return NotFound(text, **fields)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return RateLimited(text, retry_after=retry_after, **fields)
        if status >= 500:
            return ServerError(text, **fields)
        if status == 422 and workflow and (code or "validation_error") == "validation_error":
            return InvalidWorkflow(
                f"Comfy refused the workflow: {message or 'validation failed'}",
                node_errors=_node_errors(details),
            )
        if status in (400, 409, 422):
            return InvalidRequest(text, **fields)
        return ComfyAPIError(text, **fields)

    @contextlib.contextmanager
    def _translating(self, request: httpx.Request) -> Iterator[None]:
        try:
            yield
        except httpx.TransportError as exc:
            raise ComfyTransportError(
                self._redact(
                    f"Could not reach Comfy on {request.method} {_quiet_url(request.url)}: "
                    f"{type(exc).__name__}: {exc}"
                )
            ) from None

    async def _send(
        self, request: httpx.Request, *, stream: bool = False, workflow: bool = False
    ) -> httpx.Response:
        """Send one request; transport failures and HTTP errors become the package's error tree."""
        if self._closed:
            raise ComfyConfigError("This ComfyClient is closed")
        logger.debug("%s %s", request.method, self._redact(_quiet_url(request.url)))
        with self._translating(request):
            response = await self._http.send(request, stream=stream)
            if response.status_code >= 400:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                raise self._error(request, response, workflow)
        logger.debug("%s %s -> %s", request.method, _quiet_url(request.url), response.status_code)
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
        url = self._http.base_url.join(path.lstrip("/"))
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

    # -- jobs -----------------------------------------------------------------------------------
    async def create_job(
        self,
        workflow: dict[str, Any],
        *,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit an API-format workflow (``POST /jobs``).

        An ``Idempotency-Key`` is always sent (a new UUID if none is given), and the client's own
        retries of this call reuse it, so a retry never creates a second job.

        Raises:
            InvalidWorkflow: the server refused the graph (``node_errors`` names the nodes).
        """
        _check_workflow(workflow)
        data = await self._call(
            "POST",
            "/jobs",
            json={"workflow": workflow, "tags": list(tags)},
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            workflow=True,
        )
        return self._parse(Job, data)

    async def create_batch(
        self, jobs: list[dict[str, Any]], idempotency_key: str | None = None
    ) -> JobBatch:
        """Submit 1 to 50 jobs at once (``POST /jobs/batch``); each is ``{"workflow", "tags"?}``."""
        if not 1 <= len(jobs) <= MAX_BATCH:
            raise ComfyConfigError(f"A batch holds 1 to {MAX_BATCH} jobs, not {len(jobs)}")
        body = []
        for job in jobs:
            _check_workflow(job.get("workflow") if isinstance(job, dict) else None)
            body.append({"workflow": job["workflow"], "tags": list(job.get("tags") or ())})
        data = await self._call(
            "POST",
            "/jobs/batch",
            json={"jobs": body},
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            workflow=True,
        )
        return self._parse(JobBatch, data)

    async def get_job(self, job_id: str) -> Job:
        """Read a job (``GET /jobs/{id}``). Raises :class:`NotFound`."""
        return self._parse(Job, await self._call("GET", f"/jobs/{_seg(job_id)}"))

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        tags: Sequence[str] | None = None,
        batch_id: str | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> Page:
        """One page of jobs (``GET /jobs``); ``items`` are :class:`Job`; tags match all (AND)."""
        params = {
            "status": status,
            "tags": _csv(tags),
            "batch_id": batch_id,
            "offset": offset,
            "limit": limit,
        }
        return self._page(await self._call("GET", "/jobs", params=params), "jobs", Job)

    def iter_jobs(
        self,
        *,
        status: str | None = None,
        tags: Sequence[str] | None = None,
        batch_id: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Job]:
        """Every matching job, page after page."""
        return self._iterate(
            lambda offset, limit: self.list_jobs(
                status=status, tags=tags, batch_id=batch_id, offset=offset, limit=limit
            ),
            page_size,
        )

    async def cancel_job(self, job_id: str) -> Job:
        """Ask to cancel a job (``POST /jobs/{id}/cancel``).

        A pending job ends at once, a running one at its next checkpoint (and may still complete).
        The API answers 400 for a job that already ended; then this returns the job as it is
        (from :meth:`get_job`) instead of raising, so that cancelling is safe to repeat.
        """
        try:
            data = await self._call("POST", f"/jobs/{_seg(job_id)}/cancel")
        except InvalidRequest as exc:
            if exc.status_code not in (400, 409):
                raise
            job = await self.get_job(job_id)
            if not job.is_terminal:
                raise
            return job
        return self._parse(Job, data)

    async def job_outputs(self, job_id: str) -> list[Output]:
        """The outputs of a job (``GET /jobs/{id}/outputs``)."""
        data = await self._call("GET", f"/jobs/{_seg(job_id)}/outputs")
        return list(self._page(data, "outputs", Output).items)

    async def validate_workflow(self, workflow: dict[str, Any]) -> WorkflowValidation:
        """Check a workflow without running it (``POST /workflows/validate``)."""
        _check_workflow(workflow)
        data = await self._call(
            "POST", "/workflows/validate", json={"workflow": workflow}, workflow=True
        )
        return self._parse(WorkflowValidation, data)

    async def get_account(self) -> dict[str, Any]:
        """The account (``GET /account``), as the server sent it."""
        return dict(await self._call("GET", "/account") or {})

    # -- inputs and models ------------------------------------------------------------------------
    async def _upload(
        self,
        kind: str,
        model: type[M],
        source: Source,
        *,
        name: str | None,
        tags: Sequence[str],
        idempotency_key: str | None,
        fields: dict[str, str] | None = None,
    ) -> M:
        path, payload, filename = _open_source(source, name)
        mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        form = {"name": filename, **(fields or {})}
        if _csv(tags):
            form["tags"] = _csv(tags) or ""

        def body(stack: contextlib.ExitStack) -> dict[str, Any]:
            content = payload if path is None else stack.enter_context(open(path, "rb"))  # noqa: SIM115
            return {"files": {"file": (filename, content, mime)}, "data": form}

        data = await self._call(
            "POST", f"/{kind}", body=body, idempotency_key=idempotency_key or str(uuid.uuid4())
        )
        return self._parse(model, data)

    async def _from_url(
        self, kind: str, model: type[M], body: dict[str, Any], key: str | None
    ) -> M:
        data = await self._call(
            "POST", f"/{kind}/from-url", json=body, idempotency_key=key or str(uuid.uuid4())
        )
        return self._parse(model, data)

    async def _presigned(
        self,
        kind: str,
        model: type[M],
        source: Source,
        *,
        name: str,
        mime_type: str | None,
        tags: Sequence[str],
        extra: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> M:
        path, payload, filename = _open_source(source, name)
        size = path.stat().st_size if path is not None else len(payload or b"")
        mime = mime_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        ticket_body = {"name": filename, "mime_type": mime, "size": size, "tags": list(tags)}
        ticket = self._parse(
            UploadUrl,
            await self._call(
                "POST",
                f"/{kind}/get-upload-url",
                json={**ticket_body, **(extra or {})},
                idempotency_key=idempotency_key or str(uuid.uuid4()),
            ),
        )
        upload_url = httpx.URL(self.base_url).join(ticket.upload_url)

        async def put() -> httpx.Response:
            content: Any = payload if path is None else _read_chunks(path)
            headers = {"Content-Type": mime, "Content-Length": str(size)}
            # Never the key: the upload URL is presigned storage, whatever its origin.
            request = self._http.build_request("PUT", upload_url, content=content, headers=headers)
            request.headers.pop("Authorization", None)
            response = await self._send(request)
            return response

        await self.retry.call(put, what=f"PUT {_quiet_url(upload_url)}")
        data = await self._call("POST", f"/{kind}/{_seg(ticket.id)}/complete")
        return self._parse(model, data)

    async def upload_input(
        self,
        source: Source,
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Input:
        """Upload a file as an input (``POST /inputs``, multipart); workflows refer to it by ``name``.

        Args:
            source: a path, or bytes (then ``name`` is required).
            name: the name workflows use; defaults to the file's name.
        """
        return await self._upload(
            "inputs", Input, source, name=name, tags=tags, idempotency_key=idempotency_key
        )

    async def create_input_from_url(
        self,
        url: str,
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Input:
        """Have the server fetch an input from a URL (``POST /inputs/from-url``, status ``downloading``)."""
        body = {"url": url, "tags": list(tags), **({"name": name} if name else {})}
        return await self._from_url("inputs", Input, body, idempotency_key)

    async def upload_input_presigned(
        self,
        source: Source,
        *,
        name: str,
        mime_type: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Input:
        """Upload a large input straight to storage: get-upload-url, PUT (no key), complete."""
        return await self._presigned(
            "inputs",
            Input,
            source,
            name=name,
            mime_type=mime_type,
            tags=tags,
            idempotency_key=idempotency_key,
        )

    async def get_input(self, input_id: str) -> Input:
        """Read an input (``GET /inputs/{id}``)."""
        return self._parse(Input, await self._call("GET", f"/inputs/{_seg(input_id)}"))

    async def list_inputs(
        self, *, tags: Sequence[str] | None = None, offset: int = 0, limit: int = 20
    ) -> Page:
        """One page of inputs (``GET /inputs``); ``items`` are :class:`Input`."""
        params = {"tags": _csv(tags), "offset": offset, "limit": limit}
        return self._page(await self._call("GET", "/inputs", params=params), "inputs", Input)

    def iter_inputs(
        self, *, tags: Sequence[str] | None = None, page_size: int = 100
    ) -> AsyncIterator[Input]:
        """Every matching input, page after page."""
        return self._iterate(
            lambda offset, limit: self.list_inputs(tags=tags, offset=offset, limit=limit),
            page_size,
        )

    async def delete_input(self, input_id: str) -> None:
        """Delete an input (``DELETE /inputs/{id}``)."""
        await self._call("DELETE", f"/inputs/{_seg(input_id)}")

    async def upload_model(
        self,
        source: Source,
        *,
        type: str,
        name: str | None = None,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Model:
        """Upload a model file of a ``type`` (checkpoint, lora …) (``POST /models``, multipart)."""
        fields = {"type": type}
        if metadata:
            fields["metadata"] = json.dumps(metadata)
        return await self._upload(
            "models",
            Model,
            source,
            name=name,
            tags=tags,
            idempotency_key=idempotency_key,
            fields=fields,
        )

    async def create_model_from_url(
        self,
        url: str,
        *,
        type: str,
        name: str | None = None,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Model:
        """Have the server fetch a model from a URL (``POST /models/from-url``)."""
        body: dict[str, Any] = {"url": url, "type": type, "tags": list(tags)}
        if name:
            body["name"] = name
        if metadata:
            body["metadata"] = metadata
        return await self._from_url("models", Model, body, idempotency_key)

    async def upload_model_presigned(
        self,
        source: Source,
        *,
        name: str,
        type: str,
        mime_type: str | None = None,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Model:
        """Upload a large model straight to storage: get-upload-url, PUT (no key), complete."""
        extra: dict[str, Any] = {"type": type}
        if metadata:
            extra["metadata"] = metadata
        return await self._presigned(
            "models",
            Model,
            source,
            name=name,
            mime_type=mime_type,
            tags=tags,
            extra=extra,
            idempotency_key=idempotency_key,
        )

    async def get_model(self, model_id: str) -> Model:
        """Read a model (``GET /models/{id}``)."""
        return self._parse(Model, await self._call("GET", f"/models/{_seg(model_id)}"))

    async def list_models(
        self,
        *,
        type: str | None = None,
        tags: Sequence[str] | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> Page:
        """One page of models (``GET /models``); ``items`` are :class:`Model`."""
        params = {"type": type, "tags": _csv(tags), "offset": offset, "limit": limit}
        return self._page(await self._call("GET", "/models", params=params), "models", Model)

    def iter_models(
        self, *, type: str | None = None, tags: Sequence[str] | None = None, page_size: int = 100
    ) -> AsyncIterator[Model]:
        """Every matching model, page after page."""
        return self._iterate(
            lambda offset, limit: self.list_models(
                type=type, tags=tags, offset=offset, limit=limit
            ),
            page_size,
        )

    async def delete_model(self, model_id: str) -> None:
        """Delete a model (``DELETE /models/{id}``)."""
        await self._call("DELETE", f"/models/{_seg(model_id)}")

    async def model_types(self) -> list[str]:
        """The model types the server knows (``GET /models/types``)."""
        data = await self._call("GET", "/models/types")
        types = data.get("types", []) if isinstance(data, dict) else data
        return [str(t) for t in types or []]

    # -- outputs ----------------------------------------------------------------------------------
    async def list_outputs(
        self,
        job_id: str | None = None,
        type: str | None = None,
        *,
        tags: Sequence[str] | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> Page:
        """One page of outputs (``GET /outputs``); ``items`` are :class:`Output`."""
        params = {
            "job_id": job_id,
            "type": type,
            "tags": _csv(tags),
            "offset": offset,
            "limit": limit,
        }
        return self._page(await self._call("GET", "/outputs", params=params), "outputs", Output)

    async def get_output(self, output_id: str) -> Output:
        """Read an output (``GET /outputs/{id}``)."""
        return self._parse(Output, await self._call("GET", f"/outputs/{_seg(output_id)}"))

    async def delete_output(self, output_id: str) -> None:
        """Delete an output (``DELETE /outputs/{id}``)."""
        await self._call("DELETE", f"/outputs/{_seg(output_id)}")

    async def download(self, output_or_url: Output | str, dest: str | PathLike[str]) -> Path:
        """Stream an output to a file; returns its path.

        Args:
            output_or_url: an :class:`Output` (its ``download_url``; read afresh if missing) or a URL.
            dest: a directory (the file gets the output's name) or a file path. The bytes go to a
                temporary file beside the target, renamed into place once complete.

        The key is sent only if the URL is under the API base; a signed storage URL, or a
        redirect to one, never sees it.
        """
        if isinstance(output_or_url, Output):
            output = output_or_url
            if not output.download_url:
                output = await self.get_output(output.id)
            if not output.download_url:
                raise ComfyProtocolError(f"Comfy output {output.id} has no download_url")
            url = httpx.URL(self.base_url).join(output.download_url)
            name = output.name or Path(url.path).name or output.id
        else:
            url = httpx.URL(self.base_url).join(str(output_or_url))
            name = Path(unquote(url.path)).name or "download"
        target = Path(dest)
        if target.is_dir() or str(dest).endswith(("/", os.sep)):
            target = target / Path(name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        return await self.retry.call(
            lambda: self._download_once(url, target), what=f"GET {_quiet_url(url)}"
        )

    async def _download_once(self, url: httpx.URL, target: Path) -> Path:
        for _ in range(MAX_REDIRECTS + 1):
            request = self._http.build_request("GET", url, headers=self._headers(url))
            if not self.is_api_url(url):
                request.headers.pop("Authorization", None)
            response = await self._send(request, stream=True)
            try:
                if response.is_redirect and "Location" in response.headers:
                    url = url.join(response.headers["Location"])
                    continue
                return await self._write(request, response, target)
            finally:
                await response.aclose()
        raise ComfyProtocolError(f"Too many redirects downloading {_quiet_url(url)}")

    async def _write(self, request: httpx.Request, response: httpx.Response, target: Path) -> Path:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f, self._translating(request):
                async for chunk in response.aiter_bytes(CHUNK_SIZE):
                    f.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        logger.debug("Downloaded %s to %s", _quiet_url(request.url), target)
        return target


def _check_workflow(workflow: Any) -> None:
    if not isinstance(workflow, dict) or not workflow:
        raise ComfyConfigError(
            "A workflow must be a non-empty dict of nodes in ComfyUI API format "
            '({"1": {"class_type": …, "inputs": {…}}, …})'
        )


def _open_source(source: Source, name: str | None) -> tuple[Path | None, bytes | None, str]:
    """``(path, bytes, name)`` of an upload source; a path is read per attempt, not held in memory."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not name:
            raise ComfyConfigError("Uploading bytes needs a name= for the file")
        return None, bytes(source), name
    path = Path(source)
    if not path.is_file():
        raise ComfyConfigError(f"No file to upload at {str(path)!r}")
    return path, None, name or path.name


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            yield chunk
