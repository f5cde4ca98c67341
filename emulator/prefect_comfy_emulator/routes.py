"""The REST routes of the developer API under ``/developer/api/v1`` (authentication, faults and
idempotency are handled before these run, by `prefect_comfy_emulator.app.ApiGate`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from prefect_comfy.models import MODEL_TYPES
from prefect_comfy_emulator.config import API_PREFIX
from prefect_comfy_emulator.multipart import Part, parse_multipart
from prefect_comfy_emulator.state import JOB_STATUSES, EmulatorState
from prefect_comfy_emulator.wire import (
    ApiError,
    CreateInputFromUrl,
    CreateJob,
    CreateJobBatch,
    CreateModelFromUrl,
    GetInputUploadUrl,
    GetModelUploadUrl,
    ModelMetadata,
    ValidateWorkflow,
    parse_body,
    parse_json,
    split_tags,
    validate_model,
)


def _state(request: Request) -> EmulatorState:
    return request.app.state.emulator


def _owner(request: Request) -> str:
    return request.scope["emulator.owner"]


def _origin(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422, "validation_error", "Request validation failed", [{"field": field, "message": message}]
    )


def _int_param(request: Request, name: str, default: int, lo: int, hi: int | None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _invalid(name, "must be an integer") from None
    if value < lo or (hi is not None and value > hi):
        raise _invalid(name, f"must be between {lo} and {hi}" if hi else f"must be at least {lo}")
    return value


def _page(
    request: Request, plural: str, items: Iterable[Any], render: Callable[[Any], dict[str, Any]]
) -> JSONResponse:
    """One page of a list, newest first, filtered by ``tags`` (all must match)."""
    offset = _int_param(request, "offset", 0, 0, None)
    limit = _int_param(request, "limit", 20, 1, 100)
    wanted = set(split_tags(request.query_params.get("tags")))
    items = list(items)
    matching = (
        [item for item in reversed(items) if wanted <= set(item.tags)]
        if wanted
        else items[::-1]  # no tag filter: no set per item (a page of 10,000 jobs stays cheap)
    )
    chosen = matching[offset : offset + limit]
    return JSONResponse(
        {
            plural: [render(i) for i in chosen],
            "total": len(matching),
            "has_more": offset + len(chosen) < len(matching),
        }
    )


# ---- jobs -------------------------------------------------------------------------------------
async def create_job(request: Request) -> Response:
    body = parse_body(CreateJob, await request.body())
    state = _state(request)
    _, jobs = state.create_jobs(
        _owner(request), _origin(request), [(body.workflow, body.tags)], batch=False
    )
    return JSONResponse(jobs[0].wire(state.secret), status_code=202)


async def create_batch(request: Request) -> Response:
    body = parse_body(CreateJobBatch, await request.body())
    state = _state(request)
    specs = [(job.workflow, job.tags) for job in body.jobs]
    batch_id, jobs = state.create_jobs(_owner(request), _origin(request), specs, batch=True)
    return JSONResponse(
        {"batch_id": batch_id, "jobs": [j.wire(state.secret) for j in jobs]}, status_code=202
    )


async def list_jobs(request: Request) -> Response:
    state, owner = _state(request), _owner(request)
    status = request.query_params.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise _invalid("status", f"must be one of {', '.join(JOB_STATUSES)}")
    batch_id = request.query_params.get("batch_id")
    jobs = [
        j
        for j in state.jobs.values()
        if j.owner == owner
        and (status is None or j.status == status)
        and (batch_id is None or j.batch_id == batch_id)
    ]
    return _page(request, "jobs", jobs, lambda j: j.wire(state.secret))


async def get_job(request: Request) -> Response:
    state = _state(request)
    return JSONResponse(
        state.get_job(_owner(request), request.path_params["id"]).wire(state.secret)
    )


async def cancel_job(request: Request) -> Response:
    state = _state(request)
    return JSONResponse(
        state.cancel_job(_owner(request), request.path_params["id"]).wire(state.secret)
    )


async def job_outputs(request: Request) -> Response:
    state = _state(request)
    job = state.get_job(_owner(request), request.path_params["id"])
    return _page(request, "outputs", list(reversed(job.outputs)), lambda o: o.wire(state.secret))


# ---- outputs ----------------------------------------------------------------------------------
async def list_outputs(request: Request) -> Response:
    state, owner = _state(request), _owner(request)
    job_id = request.query_params.get("job_id")
    kind = request.query_params.get("type")
    if kind is not None and kind not in ("image", "video", "audio", "text", "file"):
        raise _invalid("type", "must be one of image, video, audio, text, file")
    outputs = [
        o
        for o in state.outputs.values()
        if o.owner == owner
        and (job_id is None or o.job_id == job_id)
        and (kind is None or o.type == kind)
    ]
    return _page(request, "outputs", outputs, lambda o: o.wire(state.secret))


async def get_output(request: Request) -> Response:
    state = _state(request)
    return JSONResponse(
        state.get_output(_owner(request), request.path_params["id"]).wire(state.secret)
    )


async def delete_output(request: Request) -> Response:
    state = _state(request)
    output = state.get_output(_owner(request), request.path_params["id"])
    del state.outputs[output.id]
    job = state.jobs.get(output.job_id)
    if job is not None:
        job.outputs = [o for o in job.outputs if o.id != output.id]
    return Response(status_code=204)


# ---- inputs and models ------------------------------------------------------------------------
def _kind(request: Request) -> str:
    return "model" if request.url.path.startswith(API_PREFIX + "/models") else "input"


def _metadata(raw: Part | None) -> dict[str, Any]:
    if raw is None or not raw.data:
        return {}
    try:
        data = parse_json(raw.data)
    except ApiError as exc:
        raise _invalid("metadata", f"must be a JSON object ({exc.message})") from None
    if not isinstance(data, dict):
        raise _invalid("metadata", "must be a JSON object")
    return validate_model(ModelMetadata, data).model_dump(exclude_none=True)


def _model_type(value: str | None) -> str:
    if value not in MODEL_TYPES:
        raise _invalid("type", f"must be one of {', '.join(MODEL_TYPES)}")
    return value


def _model_fields(body: Any) -> dict[str, Any]:
    """A model's type and metadata from a JSON upload body (nothing for an input)."""
    if not isinstance(body, (CreateModelFromUrl, GetModelUploadUrl)):
        return {}
    return {
        "model_type": body.type,
        "metadata": body.metadata.model_dump(exclude_none=True) if body.metadata else {},
    }


async def create_upload(request: Request) -> Response:
    """``POST /inputs`` and ``POST /models``: multipart ``file`` (+ name, tags; models: type, metadata)."""
    kind = _kind(request)
    fields = parse_multipart(request.headers.get("content-type", ""), await request.body())
    allowed = {"file", "name", "tags"} | ({"type", "metadata"} if kind == "model" else set())
    for extra in sorted(set(fields) - allowed):
        raise _invalid(extra, "unknown field")
    file = fields.get("file")
    if file is None or file.filename is None:
        raise _invalid("file", "a file part is required")
    if not file.data:
        raise _invalid("file", "the file is empty")
    name = fields["name"].text if "name" in fields else file.filename
    if not name or len(name) > 255:
        raise _invalid("name", "must be 1 to 255 characters")
    extra_fields: dict[str, Any] = {}
    if kind == "model":
        extra_fields["model_type"] = _model_type(fields["type"].text if "type" in fields else None)
        extra_fields["metadata"] = _metadata(fields.get("metadata"))
    state = _state(request)
    tags = split_tags(fields["tags"].text) if "tags" in fields else []
    record = state.new_upload(
        _owner(request), kind, _origin(request), name, "uploading", tags=tags, **extra_fields
    )
    state.accept_bytes(record, file.data, file.content_type)
    return JSONResponse(record.wire(state.secret), status_code=201)


async def create_upload_from_url(request: Request) -> Response:
    kind = _kind(request)
    body = parse_body(
        CreateModelFromUrl if kind == "model" else CreateInputFromUrl, await request.body()
    )
    name = body.name or unquote(urlsplit(body.url).path.rsplit("/", 1)[-1]) or "download"
    extra = _model_fields(body)
    state = _state(request)
    record = state.new_upload(
        _owner(request), kind, _origin(request), name, "downloading", tags=body.tags, **extra
    )
    state.start_download(record, body.url)
    return JSONResponse(record.wire(state.secret), status_code=202)


async def get_upload_url(request: Request) -> Response:
    kind = _kind(request)
    body = parse_body(
        GetModelUploadUrl if kind == "model" else GetInputUploadUrl, await request.body()
    )
    extra = _model_fields(body)
    state = _state(request)
    record = state.new_upload(
        _owner(request), kind, _origin(request), body.name, "pending_upload",
        tags=body.tags, mime_type=body.mime_type, size=body.size, **extra,
    )  # fmt: skip
    state.new_presigned(record)
    assert record.upload_expires_at is not None
    return JSONResponse(
        {
            "id": record.id,
            "status": record.status,
            "upload_url": f"{_origin(request)}/_storage/uploads/{record.upload_token}",
            "upload_expires_at": record.upload_expires_at.isoformat().replace("+00:00", "Z"),
        },
        status_code=201,
    )


async def complete_upload(request: Request) -> Response:
    state = _state(request)
    record = state.get_upload(_owner(request), _kind(request), request.path_params["id"])
    if record.status == "failed":
        raise ApiError(400, "invalid_request", f"{record.kind} {record.id} has failed")
    if record.status == "pending_upload":
        if record.data is None:
            state.fail_upload(record, "upload_not_found", "nothing was uploaded to the upload URL")
            raise ApiError(
                400, "upload_not_found", f"no file was uploaded for {record.kind} {record.id}"
            )
        state.accept_bytes(record, record.data, record.mime_type)
    return JSONResponse(record.wire(state.secret))


async def list_uploads(request: Request) -> Response:
    state, owner, kind = _state(request), _owner(request), _kind(request)
    model_type = request.query_params.get("type")
    if kind == "model" and model_type is not None:
        _model_type(model_type)
    records = [
        r
        for r in state.uploads.values()
        if r.owner == owner
        and r.kind == kind
        and (model_type is None or r.model_type == model_type)
    ]
    return _page(request, kind + "s", records, lambda r: r.wire(state.secret))


async def get_upload(request: Request) -> Response:
    state = _state(request)
    record = state.get_upload(_owner(request), _kind(request), request.path_params["id"])
    return JSONResponse(record.wire(state.secret))


async def delete_upload(request: Request) -> Response:
    state = _state(request)
    record = state.get_upload(_owner(request), _kind(request), request.path_params["id"])
    del state.uploads[record.id]
    return Response(status_code=204)


async def model_types(request: Request) -> Response:
    return JSONResponse({"types": list(MODEL_TYPES)})


# ---- workflows and account --------------------------------------------------------------------
async def validate_workflow(request: Request) -> Response:
    body = parse_body(ValidateWorkflow, await request.body())
    errors = _state(request).validate(_owner(request), body.workflow)
    return JSONResponse({"valid": not errors, "errors": errors})


async def account(request: Request) -> Response:
    state = _state(request)
    return JSONResponse(
        {
            "id": "acc_" + _owner(request).removeprefix("acct_").zfill(8),
            "email": state.config.account_email,
            "balance": 25_000_000,
            "created_at": "2025-01-01T00:00:00Z",
        }
    )


IDEMPOTENT_PATHS = frozenset(
    API_PREFIX + p
    for p in (
        "/jobs",
        "/jobs/batch",
        "/inputs",
        "/inputs/from-url",
        "/inputs/get-upload-url",
        "/models",
        "/models/from-url",
        "/models/get-upload-url",
    )
)
"""POST routes where an ``Idempotency-Key`` replays the first answer."""


def api_routes() -> list[BaseRoute]:
    def r(path: str, endpoint: Callable[..., Any], *methods: str) -> Route:
        return Route(API_PREFIX + path, endpoint, methods=list(methods))

    routes = [
        r("/jobs", create_job, "POST"),
        r("/jobs", list_jobs, "GET"),
        r("/jobs/batch", create_batch, "POST"),
        r("/jobs/{id}", get_job, "GET"),
        r("/jobs/{id}/cancel", cancel_job, "POST"),
        r("/jobs/{id}/outputs", job_outputs, "GET"),
        r("/outputs", list_outputs, "GET"),
        r("/outputs/{id}", get_output, "GET"),
        r("/outputs/{id}", delete_output, "DELETE"),
        r("/models/types", model_types, "GET"),
        r("/workflows/validate", validate_workflow, "POST"),
        r("/account", account, "GET"),
    ]
    for plural in ("inputs", "models"):
        routes += [
            r(f"/{plural}", create_upload, "POST"),
            r(f"/{plural}", list_uploads, "GET"),
            r(f"/{plural}/from-url", create_upload_from_url, "POST"),
            r(f"/{plural}/get-upload-url", get_upload_url, "POST"),
            r(f"/{plural}/{{id}}", get_upload, "GET"),
            r(f"/{plural}/{{id}}", delete_upload, "DELETE"),
            r(f"/{plural}/{{id}}/complete", complete_upload, "POST"),
        ]
    return routes
