"""The v2 job routes: submit, read, list (metadata and status filters, cursor), workflow and cancel.

The list takes ``status=<v2 status>[,<v2 status>...]`` as comfy-api-proxy 0.1.6 does (an unknown
status is refused), so that a client can list only the unfinished jobs (``queued,running,canceling``).

``Idempotency-Key`` is single use: the first request holds it, any later one (a retry, a concurrent
duplicate) is refused 422 ``idempotency_key_reuse``. A submission that definitely failed (validation,
an injected ``queue_full`` or ``insufficient_credits``) releases the key; one whose outcome is unknown
(an injected ``upstream_error``, or a fault injected ``after``) keeps it.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from prefect_comfy_emulator.idempotency import Answer, Claim
from prefect_comfy_emulator.records import JobRecord
from prefect_comfy_emulator.v2.errors import V2Error, as_v2
from prefect_comfy_emulator.v2.face import V2Face
from prefect_comfy_emulator.v2.render import job_of, status_of
from prefect_comfy_emulator.wire import ApiError, parse_json

UI_KEYS = ("nodes", "links", "last_node_id")
RESERVED = ("webhook_url", "inputs")
MAX_METADATA = 16


def face_of(request: Request) -> V2Face:
    return request.app.state.v2


def owner_of(request: Request) -> str:
    return request.scope["emulator.owner"]


def origin_of(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def invalid(message: str, field: str | None = None) -> V2Error:
    return V2Error(422, "invalid_request", message, {"field": field} if field else None)


async def json_body(request: Request) -> dict[str, Any]:
    try:
        data = parse_json(await request.body())
    except ApiError as exc:
        raise as_v2(exc) from None
    if not isinstance(data, dict):
        raise invalid("the body must be a JSON object", "body")
    return data


def queue_position(face: V2Face, job: JobRecord) -> int | None:
    if job.status != "pending":
        return None
    pending = [j for j in face.state.jobs.values() if j.status == "pending"]
    return next((i for i, j in enumerate(pending) if j is job), None)


def job_body(face: V2Face, job: JobRecord, origin: str) -> dict[str, Any]:
    return job_of(job, origin, queue_position(face, job))


def get_owned_job(face: V2Face, owner: str, job_id: str) -> JobRecord:
    job = face.state.jobs.get(job_id)
    if job is None or job.owner != owner:
        raise V2Error(404, "not_found", f"job {job_id!r} not found")
    return job


# ---- submission -------------------------------------------------------------------------------
async def claim_key(request: Request) -> Claim | None:
    """Hold the request's Idempotency-Key, or refuse a key that was used before."""
    key = request.headers.get("idempotency-key")
    if not key:
        return None
    records = request.app.state.emulator.idempotency
    held = records.try_claim((owner_of(request), request.url.path, key))
    if held is None:
        raise V2Error(
            422,
            "idempotency_key_reuse",
            "this Idempotency-Key was already used: it is single use. Find the job it created "
            "(GET /api/v2/jobs?metadata[...]) instead of submitting again",
        )
    return held


def settle_key(request: Request, claim: Claim | None, status: int) -> None:
    """Keep the key after a success or an unknown outcome (5xx); release it after a definite
    failure (4xx), so that a corrected retry may use it."""
    if claim is not None:
        records = request.app.state.emulator.idempotency
        records.settle(claim, None if 400 <= status < 500 else Answer(status, b"", ""))


def resolve_assets(face: V2Face, owner: str, workflow: dict[str, Any]) -> list[str]:
    """Replace each ``core/ASSET`` reference by its file name; return the asset ids used."""
    used: list[str] = []
    missing: dict[str, list[dict[str, str]]] = {}
    for node_id, node in workflow.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        for name, value in inputs.items():
            if not (isinstance(value, dict) and value.get("__type") == "core/ASSET"):
                continue
            info = value.get("info")
            asset_id = info.get("id") if isinstance(info, dict) else None
            asset = face.assets.get(asset_id) if isinstance(asset_id, str) else None
            if asset is None or asset.owner != owner:
                missing.setdefault(str(node_id), []).append(
                    {"field": name, "reason": "missing_asset"}
                )
                continue
            inputs[name] = face.state.uploads[asset.input_id].name
            used.append(asset.id)
    if missing:
        raise V2Error(
            422,
            "missing_asset",
            "the workflow refers to assets that do not exist or are not yours: upload them first",
            {"node_errors": missing},
        )
    return used


def check_submission(face: V2Face, owner: str, body: dict[str, Any]) -> tuple[dict, dict]:
    for key in RESERVED:
        if key in body:
            raise invalid(f"{key!r} is reserved for a later version and refused today", key)
    unknown = sorted(set(body) - {"workflow", "extra_data", "metadata"})
    if unknown:
        raise invalid(f"unknown field {unknown[0]!r}", unknown[0])
    workflow = body.get("workflow")
    if not isinstance(workflow, dict):
        raise invalid("'workflow' must be an object of nodes (API format)", "workflow")
    if any(key in workflow for key in UI_KEYS):
        raise V2Error(
            422,
            "workflow_format_ui",
            "this is a UI-format workflow (it has nodes/links): export it with 'Export (API)' "
            "and send that",
        )
    extra = body.get("extra_data")
    if extra is not None and (
        not isinstance(extra, dict)
        or not extra
        or set(extra) - {"api_key_comfy_org"}
        or not all(isinstance(v, str) for v in extra.values())
    ):
        raise invalid("'extra_data' may only hold api_key_comfy_org (a string)", "extra_data")
    metadata = body.get("metadata", {})
    if (
        not isinstance(metadata, dict)
        or len(metadata) > MAX_METADATA
        or not all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 128 and len(v) <= 512
            for k, v in metadata.items()
        )
    ):
        raise V2Error(
            422,
            "metadata_invalid",
            f"'metadata' must be an object of at most {MAX_METADATA} string labels "
            "(keys 1-128 characters, values up to 512)",
            {"field": "metadata"},
        )
    return copy.deepcopy(workflow), dict(metadata)


async def submit(request: Request) -> Response:
    face, owner = face_of(request), owner_of(request)
    body = await json_body(request)
    claim = await claim_key(request)
    status = 500
    try:
        workflow, metadata = check_submission(face, owner, body)
        injected = face.take_injected("POST", "/jobs")
        if injected is not None:
            status = injected.status
            raise injected
        asset_ids = resolve_assets(face, owner, workflow)
        errors = face.state.validate(owner, workflow)
        if errors:
            node_errors: dict[str, list[dict[str, Any]]] = {}
            for err in errors:
                node_errors.setdefault(str(err.get("node_id")), []).append(
                    {"field": err.get("field"), "reason": err.get("message")}
                )
            first = errors[0]
            where = f"Node {first['node_id']}: " if first.get("node_id") else ""
            raise V2Error(
                422, "invalid_workflow", where + str(first["message"]), {"node_errors": node_errors}
            )
        _, jobs = face.state.create_jobs(owner, origin_of(request), [(workflow, [])], batch=False)
        job = jobs[0]
        job.metadata, job.asset_ids = metadata, asset_ids
        status = 201
        return JSONResponse(job_body(face, job, origin_of(request)), status_code=201)
    except ApiError as exc:
        status = exc.status
        raise as_v2(exc) from None
    finally:
        settle_key(request, claim, status)


# ---- reading ----------------------------------------------------------------------------------
async def get_job(request: Request) -> Response:
    face = face_of(request)
    job = get_owned_job(face, owner_of(request), request.path_params["id"])
    return JSONResponse(job_body(face, job, origin_of(request)))


async def get_workflow(request: Request) -> Response:
    job = get_owned_job(face_of(request), owner_of(request), request.path_params["id"])
    return JSONResponse({"workflow": job.workflow, "format": "api"})


def _cursor(job_id: str) -> str:
    return base64.urlsafe_b64encode(job_id.encode()).decode().rstrip("=")


def _after(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError:
        raise V2Error(
            422, "invalid_cursor", "'cursor' is not a cursor this server gave out"
        ) from None


LISTED_STATUSES = frozenset(
    {"queued", "running", "canceling", "succeeded", "failed", "canceled", "expired"}
)


def _statuses(raw: str | None) -> frozenset[str] | None:
    """The ``status`` filter: comma-separated v2 statuses (``None``: every job)."""
    if not raw:
        return None
    wanted = frozenset(s.strip() for s in raw.split(",") if s.strip())
    unknown = wanted - LISTED_STATUSES
    if unknown:
        raise invalid(
            f"unknown status filter value(s): {', '.join(sorted(unknown))} (use "
            f"{', '.join(sorted(LISTED_STATUSES))})",
            "status",
        )
    return wanted


async def list_jobs(request: Request) -> Response:
    face, owner = face_of(request), owner_of(request)
    if not face.config.v2_list_jobs:
        raise V2Error(501, "not_implemented", "listing jobs is not implemented on this server")
    raw_limit = request.query_params.get("limit", "20")
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= 100:
        raise invalid("'limit' must be an integer from 1 to 100", "limit")
    wanted: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("metadata"):
            if not (key.startswith("metadata[") and key.endswith("]") and len(key) > 10):
                raise V2Error(
                    422, "invalid_metadata_filter", "filter by metadata as metadata[<key>]=<value>"
                )
            wanted[key[len("metadata[") : -1]] = value
        if len(wanted) > MAX_METADATA:
            raise V2Error(
                422, "invalid_metadata_filter", f"at most {MAX_METADATA} metadata filters"
            )
        elif key not in ("limit", "cursor", "status") and not key.startswith("metadata"):
            raise invalid(f"unknown query parameter {key!r}", key)
    statuses = _statuses(request.query_params.get("status"))
    jobs = [
        j
        for j in reversed(face.state.jobs.values())
        if j.owner == owner
        and all(j.metadata.get(k) == v for k, v in wanted.items())
        and (statuses is None or status_of(j) in statuses)
    ]
    cursor = request.query_params.get("cursor")
    if cursor is not None:
        after = _after(cursor)
        index = next((i for i, j in enumerate(jobs) if j.id == after), None)
        if index is None:
            raise V2Error(422, "invalid_cursor", "'cursor' is not a cursor this server gave out")
        jobs = jobs[index + 1 :]
    page = jobs[: int(raw_limit)]
    origin = origin_of(request)
    items = []
    for job in page:
        item = job_body(face, job, origin)
        item.update(
            create_time=job.created_at,
            update_time=job.completed_at or job.started_at or job.created_at,
        )
        items.append(item)
    answer: dict[str, Any] = {"jobs": items}
    if len(jobs) > len(page):
        answer["next_cursor"] = _cursor(page[-1].id)
    return JSONResponse(answer)


async def cancel(request: Request) -> Response:
    face, owner = face_of(request), owner_of(request)
    job = get_owned_job(face, owner, request.path_params["id"])
    if job.status in ("pending", "running") and not job.cancel_requested:
        face.state.cancel_job(owner, job.id)
        if job.status == "running":
            face.state.bus.tell_listeners(owner, "job.canceling", {"id": job.id})
    return JSONResponse(job_body(face, job, origin_of(request)))


def job_routes() -> list[tuple[str, Any, str]]:
    return [
        ("/jobs", submit, "POST"),
        ("/jobs", list_jobs, "GET"),
        ("/jobs/{id}", get_job, "GET"),
        ("/jobs/{id}/workflow", get_workflow, "GET"),
        ("/jobs/{id}/cancel", cancel, "POST"),
    ]
