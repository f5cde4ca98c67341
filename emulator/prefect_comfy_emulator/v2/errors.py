"""The v2 face's errors: ``{"error": {"code", "message", "details"?}}`` with an ``X-Comfy-Request-Id``.

Every code of the contract (``comfy-api-v2.openapi.yaml``) plus the emulator's own refusals of bad
input. ``details`` is an object or absent (the v1 face sends a list), so `as_v2` translates
an error raised by shared code (authentication, body parsing, faults, limits) into this shape.

Example:
    >>> V2Error(409, "hash_mismatch", "the bytes do not match expected_hash").body()["error"]["code"]
    'hash_mismatch'
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.responses import JSONResponse

from prefect_comfy_emulator.wire import ApiError

V2_ERROR_CODES = frozenset(
    {
        # the contract's codes
        "invalid_workflow",
        "workflow_format_ui",
        "missing_asset",
        "hash_mismatch",
        "blob_not_found",
        "idempotency_key_reuse",
        "queue_full",
        "insufficient_credits",
        "not_found",
        "unauthorized",
        "forbidden",
        "rate_limited",
        "deployment_not_ready",
        "deployment_stopped",
        "upstream_error",
        "too_many_streams",
        "not_implemented",
        "asset_in_use",
        "metadata_invalid",
        "invalid_cursor",
        "invalid_metadata_filter",
        # bad input that the contract leaves unnamed
        "invalid_request",
        "method_not_allowed",
        "payload_too_large",
    }
)
STATUS_OF = {
    "invalid_workflow": 422,
    "workflow_format_ui": 422,
    "missing_asset": 422,
    "hash_mismatch": 409,
    "blob_not_found": 404,
    "idempotency_key_reuse": 422,
    "queue_full": 429,
    "insufficient_credits": 402,
    "not_found": 404,
    "unauthorized": 401,
    "forbidden": 403,
    "rate_limited": 429,
    "deployment_not_ready": 429,
    "deployment_stopped": 422,
    "upstream_error": 500,
    "too_many_streams": 429,
    "not_implemented": 501,
    "asset_in_use": 409,
}
"""The HTTP status the contract gives each code (for injected errors)."""
REQUEST_ID_HEADER = "X-Comfy-Request-Id"


class V2Error(ApiError):
    """An error answer of the v2 face."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        assert code in V2_ERROR_CODES, code
        Exception.__init__(self, message)
        self.status, self.code, self.message = status, code, message
        self.details_object = details
        self.details = []
        self.headers = {REQUEST_ID_HEADER: f"req_{uuid.uuid4().hex}", **(headers or {})}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details_object is not None:
            error["details"] = self.details_object
        return {"error": error}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


_CODE_OF_V1 = {
    "internal_error": "upstream_error",
    "validation_error": "invalid_request",
    "upload_not_found": "not_found",
    "download_failed": "upstream_error",
}


def as_v2(error: ApiError) -> V2Error:
    """The same refusal in the v2 shape (a `V2Error` is returned as it is)."""
    if isinstance(error, V2Error):
        return error
    code = _CODE_OF_V1.get(error.code, error.code)
    if error.status == 405:
        code = "method_not_allowed"
    elif error.status == 413:
        code = "payload_too_large"
    if code not in V2_ERROR_CODES:
        code = "invalid_request"
    details = {"errors": error.details} if error.details else None
    return V2Error(error.status, code, error.message, details, error.headers)
