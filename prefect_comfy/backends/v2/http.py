"""Comfy API v2 at the HTTP level: its `Dialect`, its error codes, and its one session.

Every request goes through the package's one `HttpSession`;
what is v2's own is here:

- ``Authorization: Bearer <key>``, only to the server's origin under ``/api/v2`` (a content
  redirect to signed storage is followed without it, by the session's one redirect rule).
- The error envelope ``{"error": {"code", "message", "details"}}`` and its codes, mapped onto the
  package's error tree by `v2_error` (one table, `HINTS`, says what the user can do),
  with the ``X-Comfy-Request-Id`` of the answer kept on the error (``request_id``, and in its message).
- 429 (``rate_limited``, ``queue_full``, ``deployment_not_ready``) retried within the REST budget
  after ``Retry-After``; 501 ``not_implemented`` never retried (the surface lacks the feature).

Example:
    >>> V2_DIALECT.key_value("k"), V2_DIALECT.retries(429), V2_DIALECT.retries(501)
    ('Bearer k', True, False)
"""

from __future__ import annotations

from typing import Any

import httpx

from prefect_comfy.exceptions import (
    ComfyAPIError,
    ComfyError,
    InvalidRequest,
    InvalidWorkflow,
    RateLimited,
    TooManyStreams,
)
from prefect_comfy.transport.dialect import DEFAULT_RETRY_STATUSES, Dialect
from prefect_comfy.transport.errors import fields_from_body
from prefect_comfy.transport.http import HttpSession

__all__ = ["API_PREFIX", "HINTS", "REQUEST_ID_HEADER", "V2_DIALECT", "V2Http", "v2_error"]

API_PREFIX = "/api/v2"
REQUEST_ID_HEADER = "X-Comfy-Request-Id"
_REQUEST_ID_EXTENSION = "comfy_request_id"

HINTS: dict[str, str] = {
    "insufficient_credits": "the account has no credits left for this job: add credits "
    "(Comfy Cloud: https://platform.comfy.org) and run it again",
    "workflow_format_ui": "this is a UI-format graph (nodes/links); in ComfyUI use "
    "Workflow > Export (API) and submit that file",
    "missing_asset": "a core/ASSET reference names an asset this key cannot use: upload the file "
    "with upload_input (or comfy_upload_input) and refer to the asset it returns",
    "deployment_stopped": "the serverless deployment is stopped: start it in the Comfy dashboard",
    "deployment_not_ready": "the serverless deployment is starting; retried after Retry-After",
    "queue_full": "the server's queue is full; retried after Retry-After",
    "idempotency_key_reuse": "Comfy API v2 refuses a reused Idempotency-Key (it never replays "
    "one): use a new key, or look the job up instead of submitting again",
    "hash_mismatch": "the uploaded bytes do not match the expected blake3 hash",
    "unauthorized": "check the API key of the ComfyV2Credentials block (or COMFY_V2_API_KEY)",
}
"""What a user can do about each v2 error code, appended to the error's message."""


def _read_v2_error(body: Any, reason: str) -> tuple[str | None, str, list[Any]]:
    """v2's envelope; ``details`` is an object there (``node_errors`` for a refused graph)."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        details = error.get("details")
        code = error.get("code")
        message = str(error.get("message") or reason)
        if isinstance(details, dict):
            return (str(code) if code else None), message, [details]
    return fields_from_body(body, reason)


def node_errors_of(message: str, details: Any) -> list[dict[str, Any]]:
    """``details.node_errors`` (``{node_id: [{field, reason}] }``) as InvalidWorkflow entries."""
    found: list[dict[str, Any]] = []
    raw = details.get("node_errors") if isinstance(details, dict) else None
    if isinstance(raw, dict):
        for node_id, problems in raw.items():
            items = problems if isinstance(problems, list) else [problems]
            for item in items:
                entry: dict[str, Any] = {"node_id": str(node_id)}
                if isinstance(item, dict):
                    if item.get("class_type"):
                        entry["class_type"] = item["class_type"]
                    if item.get("field"):
                        entry["field"] = item["field"]
                    entry["message"] = str(
                        item.get("reason") or item.get("message") or item.get("details") or ""
                    )
                else:
                    entry["message"] = str(item)
                found.append(entry)
    return found or [{"node_id": None, "message": message}]


def _refused_workflow(status: int, body: Any) -> ComfyError | None:
    """422 ``invalid_workflow`` / ``workflow_format_ui`` / ``missing_asset`` → ``InvalidWorkflow``."""
    if status != 422 or not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    error = body["error"]
    code, message = error.get("code"), str(error.get("message") or "")
    if code == "invalid_workflow":
        return InvalidWorkflow(
            f"Comfy API v2 refused the workflow: {message}",
            node_errors=node_errors_of(message, error.get("details")),
        )
    if code in ("workflow_format_ui", "missing_asset"):
        return InvalidWorkflow(f"Comfy API v2 refused the workflow [{code}]: {HINTS[code]}")
    return None


V2_DIALECT = Dialect(
    name="Comfy API v2",
    key_header="Authorization",
    key_prefix="Bearer ",
    key_path_prefix=API_PREFIX,
    auth_hint=HINTS["unauthorized"],
    retry_statuses=DEFAULT_RETRY_STATUSES - {501},
    workflow_error=_refused_workflow,
    read_error=_read_v2_error,
)
"""Comfy API v2: ``Authorization: Bearer``, only under ``/api/v2``; 501 is never retried."""


def v2_error(exc: ComfyError, request_id: str | None) -> ComfyError:
    """The error as v2 means it: a hint for the user, ``TooManyStreams``, the request id kept.

    Args:
        exc: the error the shared translation made.
        request_id: the answer's ``X-Comfy-Request-Id``, if any.
    """
    code = getattr(exc, "error_code", None)
    text = str(exc)
    hint = HINTS.get(code or "")
    if hint and hint not in text and not isinstance(exc, InvalidWorkflow):
        text = f"{text} ({hint})"
    if request_id and request_id not in text:
        text = f"{text} [request id {request_id}]"
    if isinstance(exc, ComfyAPIError):
        fields: dict[str, Any] = {
            "status_code": exc.status_code,
            "error_code": exc.error_code,
            "details": exc.details,
        }
        if isinstance(exc, RateLimited):
            kind = TooManyStreams if code == "too_many_streams" else type(exc)
            new: ComfyError = kind(text, retry_after=exc.retry_after, **fields)
        else:
            new = type(exc)(text, **fields)
    elif isinstance(exc, InvalidWorkflow):
        new = InvalidWorkflow(text.split("\n", 1)[0], node_errors=exc.node_errors)
    else:
        return exc
    new.request_id = request_id  # type: ignore[attr-defined]
    return new


async def _keep_request_id(response: httpx.Response) -> None:
    if response.status_code >= 400:
        response.request.extensions[_REQUEST_ID_EXTENSION] = response.headers.get(REQUEST_ID_HEADER)


class V2Http(HttpSession):
    """The shared HTTP session in the v2 dialect; its errors carry ``request_id``."""

    def __init__(self, origin: str, key: str | None, **kwargs: Any) -> None:
        super().__init__(origin, key, V2_DIALECT, **kwargs)
        self._hooked: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:  # type: ignore[override]
        client = super().client
        if self._hooked is not client:
            client.event_hooks = {**client.event_hooks, "response": [_keep_request_id]}
            self._hooked = client
        return client

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
        try:
            return await super().send(request, **kwargs)
        except (ComfyAPIError, InvalidWorkflow) as exc:
            request_id = request.extensions.get(_REQUEST_ID_EXTENSION)
            raise v2_error(exc, request_id) from None

    def url(self, path: str) -> str:
        """``{origin}/api/v2{path}``; a server-relative link (``/api/v2/...``) resolves as it is."""
        if path.startswith(API_PREFIX):
            return f"{self.origin}{path}"
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.origin}{API_PREFIX}{path}"

    async def v2(self, method: str, path: str, **kwargs: Any) -> Any:
        """One v2 call, decoded; retried as the dialect allows unless ``retry=False``."""
        return await self.json(method, self.url(path), what=f"{method} {path}", **kwargs)


def is_code(exc: BaseException, *codes: str) -> bool:
    """Whether an error is a v2 answer with one of these codes."""
    return isinstance(exc, (ComfyAPIError, InvalidRequest)) and exc.error_code in codes
