"""Where HTTP answers and httpx failures become the package's error tree (and nowhere else).

:func:`error_from_response` maps an HTTP error answer to a :class:`~prefect_comfy.exceptions.ComfyError`;
:func:`translating_transport_errors` turns an ``httpx.TransportError`` raised inside it into a
:class:`~prefect_comfy.exceptions.ComfyTransportError`. Both take the secrets to scrub from messages.
The REST session (:meth:`prefect_comfy.transport.session.RestSession._send`) is their only caller for
requests; a streamed download body is read under :func:`translating_transport_errors` too.

Example:
    >>> import httpx
    >>> request = httpx.Request("GET", "https://x.test/developer/api/v1/jobs/j1")
    >>> response = httpx.Response(404, json={"error": {"code": "not_found", "message": "no job"}})
    >>> type(error_from_response(request, response, secrets=[], key_allowed=True)).__name__
    'NotFound'
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from prefect_comfy.exceptions import (
    AuthenticationError,
    ComfyAPIError,
    ComfyError,
    ComfyTransportError,
    InvalidRequest,
    InvalidWorkflow,
    NotFound,
    RateLimited,
    ServerError,
)
from prefect_comfy.redaction import redact
from prefect_comfy.transport.retry import parse_retry_after

__all__ = ["error_fields", "error_from_response", "quiet_url", "translating_transport_errors"]


def quiet_url(url: httpx.URL) -> str:
    """A URL fit for a log line: no query string (signed URLs carry tokens there)."""
    return str(url.copy_with(query=None, fragment=None))


def error_fields(response: httpx.Response) -> tuple[str | None, str, list[Any]]:
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


def error_from_response(
    request: httpx.Request,
    response: httpx.Response,
    *,
    secrets: Sequence[str],
    key_allowed: bool,
    workflow: bool = False,
) -> ComfyError:
    """The error for an HTTP error answer (status 400 or more); its body must have been read.

    Args:
        request: the request that was answered.
        response: the answer.
        secrets: strings scrubbed from every message (the API key).
        key_allowed: whether the request's URL may carry the key; a 401/403 elsewhere (signed
            storage) is an expired URL, not a wrong key.
        workflow: the call submitted a workflow, so a 422 ``validation_error`` is
            :class:`InvalidWorkflow`.
    """
    status = response.status_code
    code, message, details = error_fields(response)
    message = redact(message, secrets)
    where = f"{request.method} {redact(quiet_url(request.url), secrets)}"
    text = f"Comfy API error on {where}: HTTP {status}" + (f" [{code}]" if code else "")
    text += f": {message}" if message else ""
    fields: dict[str, Any] = {"status_code": status, "error_code": code, "details": details}
    if status in (401, 403) and not key_allowed:
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
def translating_transport_errors(request: httpx.Request, secrets: Sequence[str]) -> Iterator[None]:
    """Raise :class:`ComfyTransportError` (redacted, no chained cause) for an httpx transport error."""
    try:
        yield
    except httpx.TransportError as exc:
        raise ComfyTransportError(
            redact(
                f"Could not reach Comfy on {request.method} {quiet_url(request.url)}: "
                f"{type(exc).__name__}: {exc}",
                secrets,
            )
        ) from None
