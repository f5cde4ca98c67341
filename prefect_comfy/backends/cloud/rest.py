"""The async REST client of the Comfy developer API.

`ComfyClient` wraps one `httpx.AsyncClient` with an explicit life (``async with`` or
`ComfyClient.aclose`), a transport seam (``httpx.MockTransport`` in unit tests), typed answers
(`prefect_comfy.models`) and one place where HTTP and transport failures become the package's
error tree (`prefect_comfy.transport.errors`, used by ``_send``). Failed calls that
`is_retryable` allows (429, 5xx, transport errors) are retried by
`RetryPolicy`; creating calls always carry an ``Idempotency-Key``
so a retry replays instead of duplicating.

The client is built in layers, one module each: `session` (configuration,
the lazy httpx client, key scoping, the one send), `transfer` (uploads and
downloads), and this module (jobs and the read/list/delete endpoints). Building a client does no I/O:
the httpx client is made on the first request and shares the process's one SSL context.

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

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from prefect_comfy.exceptions import ComfyConfigError, ComfyProtocolError, InvalidRequest
from prefect_comfy.models import Input, Job, JobBatch, Model, Output, Page, WorkflowValidation
from prefect_comfy.transport.session import (
    USER_AGENT,
    RestSession,
    csv,
    normalize_origin,
    segment,
    shared_ssl_context,
)
from prefect_comfy.transport.transfer import CHUNK_SIZE, MAX_REDIRECTS, Source, Transfers

__all__ = [
    "CHUNK_SIZE",
    "MAX_BATCH",
    "MAX_REDIRECTS",
    "USER_AGENT",
    "ComfyClient",
    "RestSession",
    "Source",
    "normalize_origin",
    "shared_ssl_context",
]

MAX_BATCH = 50
"""The most jobs one ``POST /jobs/batch`` takes."""


class ComfyClient(Transfers):
    """An async client of the Comfy developer API (``{base_url}/developer/api/v1``).

    Args:
        api_key: the key (``comfyui-…``); defaults to ``COMFY_API_KEY``.
        base_url: the origin, such as ``https://cloud.comfy.org`` or ``http://127.0.0.1:8765``;
            defaults to ``COMFY_BASE_URL``.
        settings: where unset values come from; ``ComfySettings()`` (the environment) if omitted.
        transport: an httpx transport (``httpx.MockTransport`` in tests).
        timeout: seconds or an ``httpx.Timeout``; defaults to the settings' request/connect timeouts.
        max_retries: retries of one call after 429, 5xx or a transport error.
        retry: a full `RetryPolicy` (overrides ``max_retries``), e.g. with a sleep that
            does not wait, for tests.

    Uploads (multipart, from a URL, presigned) and `download` come from
    `Transfers`; construction, `aclose` and
    `is_api_url` from `RestSession`.

    Raises:
        ComfyConfigError: no API key, or a base URL that is not ``http(s)://host``.
    """

    async def __aenter__(self) -> ComfyClient:
        return self

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
        """Read a job (``GET /jobs/{id}``). Raises `NotFound`."""
        return self._parse(Job, await self._call("GET", f"/jobs/{segment(job_id)}"))

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        tags: Sequence[str] | None = None,
        batch_id: str | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> Page:
        """One page of jobs (``GET /jobs``); ``items`` are `Job`; tags match all (AND)."""
        params = {
            "status": status,
            "tags": csv(tags),
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
        (from `get_job`) instead of raising, so that cancelling is safe to repeat.
        """
        try:
            data = await self._call("POST", f"/jobs/{segment(job_id)}/cancel")
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
        data = await self._call("GET", f"/jobs/{segment(job_id)}/outputs")
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
        data = await self._call("GET", "/account")
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ComfyProtocolError(
                f"Comfy answered GET /account with a {type(data).__name__}, not an object"
            )
        return data

    # -- inputs and models (uploads are in transfer.py) -------------------------------------
    async def get_input(self, input_id: str) -> Input:
        """Read an input (``GET /inputs/{id}``)."""
        return self._parse(Input, await self._call("GET", f"/inputs/{segment(input_id)}"))

    async def list_inputs(
        self, *, tags: Sequence[str] | None = None, offset: int = 0, limit: int = 20
    ) -> Page:
        """One page of inputs (``GET /inputs``); ``items`` are `Input`."""
        params = {"tags": csv(tags), "offset": offset, "limit": limit}
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
        await self._call("DELETE", f"/inputs/{segment(input_id)}")

    async def get_model(self, model_id: str) -> Model:
        """Read a model (``GET /models/{id}``)."""
        return self._parse(Model, await self._call("GET", f"/models/{segment(model_id)}"))

    async def list_models(
        self,
        *,
        type: str | None = None,
        tags: Sequence[str] | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> Page:
        """One page of models (``GET /models``); ``items`` are `Model`."""
        params = {"type": type, "tags": csv(tags), "offset": offset, "limit": limit}
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
        await self._call("DELETE", f"/models/{segment(model_id)}")

    async def model_types(self) -> list[str]:
        """The model types the server knows (``GET /models/types``)."""
        data = await self._call("GET", "/models/types")
        types = data.get("types", []) if isinstance(data, dict) else data
        if types is None:
            return []
        if not isinstance(types, list):
            raise ComfyProtocolError(
                f"Comfy answered GET /models/types with a {type(types).__name__}, not a list"
            )
        return [str(t) for t in types]

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
        """One page of outputs (``GET /outputs``); ``items`` are `Output`."""
        params = {
            "job_id": job_id,
            "type": type,
            "tags": csv(tags),
            "offset": offset,
            "limit": limit,
        }
        return self._page(await self._call("GET", "/outputs", params=params), "outputs", Output)

    async def get_output(self, output_id: str) -> Output:
        """Read an output (``GET /outputs/{id}``)."""
        return self._parse(Output, await self._call("GET", f"/outputs/{segment(output_id)}"))

    async def delete_output(self, output_id: str) -> None:
        """Delete an output (``DELETE /outputs/{id}``)."""
        await self._call("DELETE", f"/outputs/{segment(output_id)}")


def _check_workflow(workflow: Any) -> None:
    if not isinstance(workflow, dict) or not workflow:
        raise ComfyConfigError(
            "A workflow must be a non-empty dict of nodes in ComfyUI API format "
            '({"1": {"class_type": …, "inputs": {…}}, …})'
        )
