"""Where HTTP answers and httpx failures become the package's error tree (and nowhere else).

`error_from_response` maps an HTTP error answer to a `ComfyError`
in the words of the server's `Dialect`;
`translating_transport_errors` turns an ``httpx.TransportError`` raised inside it into a
`ComfyTransportError`. Both scrub the secrets they are given from
every message. The HTTP session (`prefect_comfy.transport.http.HttpSession`) is their only
caller; every server kind goes through it.

Example:
    >>> import httpx
    >>> request = httpx.Request("GET", "https://x.test/developer/api/v1/jobs/j1")
    >>> response = httpx.Response(404, json={"error": {"code": "not_found", "message": "no job"}})
    >>> type(error_from_response(request, response, secrets=[], key_allowed=True)).__name__
    'NotFound'
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import orjson

from prefect_comfy.exceptions import (
    AuthenticationError,
    ComfyAPIError,
    ComfyError,
    ComfyProtocolError,
    ComfyTransportError,
    InvalidRequest,
    InvalidWorkflow,
    NotFound,
    RateLimited,
    ServerError,
    WebSocketAuthError,
)
from prefect_comfy.redaction import redact
from prefect_comfy.transport.dialect import Dialect
from prefect_comfy.transport.retry import parse_retry_after

__all__ = [
    "CLOUD_DIALECT_NAME",
    "MESSAGE_CUT",
    "decode_json",
    "error_fields",
    "error_from_response",
    "fields_from_body",
    "handshake_error",
    "quiet_url",
    "redirect_error",
    "translating_transport_errors",
]

MESSAGE_CUT = 300
"""The most characters of a server's error text quoted in an exception message."""
CLOUD_DIALECT_NAME = "Comfy API"


def quiet_url(url: httpx.URL) -> str:
    """A URL fit for a log line: no query string (signed URLs carry tokens there)."""
    return str(url.copy_with(query=None, fragment=None))


def decode_json(content: bytes) -> Any:
    """A JSON body, decoded; raises ``ValueError`` for anything that is not JSON (deep nesting too)."""
    try:
        # orjson (Prefect's own JSON library) decodes a page of 100 jobs several times faster;
        # whatever it refuses (NaN, huge integers, deep nesting …) goes to the standard decoder,
        # so both accept and refuse the same bodies.
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(content)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _text_of(content: bytes) -> str:
    return content[: MESSAGE_CUT * 4].decode("utf-8", errors="replace").strip()[:MESSAGE_CUT]


def error_fields(
    response: httpx.Response, content: bytes | None = None, dialect: Dialect | None = None
) -> tuple[str | None, str, list[Any]]:
    """``(code, message, details)`` from an error body; lenient about shape (and non-JSON bodies).

    Args:
        response: the answer (its status and reason phrase).
        content: the body as read (at most a few KiB of it); ``response.content`` when omitted.
        dialect: whose ``read_error`` reads the body (the lenient default when ``None``).
    """
    if content is None:
        content = response.content
    try:
        body = decode_json(content)
    except (ValueError, UnicodeDecodeError):
        return None, (_text_of(content) or response.reason_phrase or "no error body"), []
    reader = (dialect.read_error if dialect else None) or fields_from_body
    return reader(body, response.reason_phrase or "")


def fields_from_body(body: Any, reason: str = "") -> tuple[str | None, str, list[Any]]:
    """``(code, message, details)`` from a decoded error body of any shape."""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, str):
        return None, error[:MESSAGE_CUT], []
    if not isinstance(error, dict):
        return None, str(error)[:MESSAGE_CUT], []
    code = error.get("code") or error.get("type")
    message = error.get("message") or error.get("detail") or reason
    details = error.get("details") or []
    if isinstance(details, dict):
        # ComfyUI-style node errors keyed by node id.
        details = [
            {"node_id": str(k), **(v if isinstance(v, dict) else {"message": str(v)})}
            for k, v in details.items()
        ]
    elif not isinstance(details, list):
        details = [details]
    return (str(code)[:MESSAGE_CUT] if code else None), str(message)[:MESSAGE_CUT], details


SHOWN_DETAILS = 3
"""How many of an error's ``details`` its message names (all stay in ``ComfyAPIError.details``)."""


def details_text(details: list[Any]) -> str:
    """`` (field: what is wrong; …)`` from an error's ``details``, for the one-line message.

    Example:
        >>> details_text([{"field": "status", "message": "must be one of pending, running"}])
        ' (status: must be one of pending, running)'
        >>> details_text([])
        ''
    """
    parts = []
    for item in details[:SHOWN_DETAILS]:
        if isinstance(item, dict):
            field = item.get("field") or item.get("loc") or item.get("name")
            said = item.get("message") or item.get("msg") or item.get("details")
            if isinstance(field, list):
                field = ".".join(str(p) for p in field)
            text = f"{field}: {said}" if field and said else str(said or field or "")
        else:
            text = str(item)
        if text:
            parts.append(text[:MESSAGE_CUT])
    if len(details) > SHOWN_DETAILS:
        parts.append(f"{len(details) - SHOWN_DETAILS} more")
    return f" ({'; '.join(parts)})" if parts else ""


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


def cloud_workflow_error(status: int, body: Any) -> ComfyError | None:
    """The developer API's refusal of a workflow: 422 ``validation_error`` → ``InvalidWorkflow``."""
    if status != 422:
        return None
    code, message, details = fields_from_body(body)
    if (code or "validation_error") != "validation_error":
        return None
    return InvalidWorkflow(
        f"Comfy refused the workflow: {message or 'validation failed'}",
        node_errors=_node_errors(details),
    )


CLOUD_DIALECT = Dialect(
    name=CLOUD_DIALECT_NAME,
    key_header="Authorization",
    key_prefix="Bearer ",
    key_path_prefix="/developer/api/v1",
    auth_hint="check COMFY_API_KEY or the credentials block",
    workflow_error=cloud_workflow_error,
)
"""The Comfy Cloud developer API (and the emulator): ``Authorization: Bearer``, only under the API."""


def error_from_response(
    request: httpx.Request,
    response: httpx.Response,
    *,
    secrets: Sequence[str | None],
    key_allowed: bool,
    workflow: bool = False,
    dialect: Dialect = CLOUD_DIALECT,
    content: bytes | None = None,
) -> ComfyError:
    """The error for an HTTP error answer (status 400 or more).

    Args:
        request: the request that was answered.
        response: the answer.
        secrets: strings scrubbed from every message (the API key).
        key_allowed: whether the request's URL may carry the key; a 401/403 elsewhere (signed
            storage) is an expired URL, not a wrong key.
        workflow: the call submitted a workflow, so the dialect's refusal becomes
            `InvalidWorkflow`.
        dialect: the kind of server (its name in messages, its retryable statuses).
        content: the body as read (capped); ``response.content`` when omitted.
    """
    status = response.status_code
    if content is None:
        content = response.content
    if workflow and dialect.workflow_error is not None:
        try:
            body = decode_json(content)
        except (ValueError, UnicodeDecodeError):
            body = None
        refused = dialect.workflow_error(status, body)
        if isinstance(refused, ComfyError):
            return refused
    code, message, details = error_fields(response, content, dialect)
    message = redact(message, secrets)
    where = f"{request.method} {redact(quiet_url(request.url), secrets)}"
    text = f"{dialect.name} error on {where}: HTTP {status}" + (f" [{code}]" if code else "")
    text += f": {message}" if message else ""
    text += redact(details_text(details), secrets)
    fields: dict[str, Any] = {"status_code": status, "error_code": code, "details": details}
    if status in (401, 403) and not key_allowed:
        return ComfyAPIError(text, **fields)
    if status in (401, 403):
        return AuthenticationError(
            f"{_rejecter(dialect)} rejected the API key (HTTP {status}): {dialect.auth_hint}",
            **fields,
        )
    if status == 404:
        return NotFound(text, **fields)
    if status == 429 and dialect.retries(status):
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return RateLimited(text, retry_after=retry_after, **fields)
    if status >= 500 and dialect.retries(status):
        return ServerError(text, **fields)
    if status in (400, 409, 422):
        return InvalidRequest(text, **fields)
    return ComfyAPIError(text, **fields)


def redirect_error(
    request: httpx.Request,
    response: httpx.Response,
    dialect: Dialect,
    origin: str,
    secrets: Sequence[str | None],
) -> ComfyAPIError:
    """The error for a redirect answer to an API call: API calls never follow one."""
    location = response.headers.get("Location")
    target = redact(quiet_url(request.url.join(location)), secrets) if location else "nowhere"
    return ComfyAPIError(
        f"{dialect.name} answered {request.method} {redact(quiet_url(request.url), secrets)} with "
        f"a redirect (HTTP {response.status_code}) to {target}. API calls do not follow "
        f"redirects, so that the API key never leaves {origin}: if the server has moved, set the "
        "base URL (the block's URL or COMFY_BASE_URL) to its new address.",
        status_code=response.status_code,
    )


def handshake_error(status: int, dialect: Dialect, where: str) -> ComfyError:
    """The error for a refused WebSocket handshake: 401/403 is the key, anything else transport.

    Args:
        status: the HTTP status the handshake answered.
        dialect: the kind of server (its name and what to check about the key).
        where: the server's origin (never a URL with the key in it).
    """
    if status in (401, 403):
        return WebSocketAuthError(
            f"{dialect.name} event stream at {where} refused the API key (HTTP {status}): "
            f"{dialect.auth_hint}"
        )
    return ComfyTransportError(
        f"{dialect.name} WebSocket handshake at {where} answered HTTP {status}"
    )


def _rejecter(dialect: Dialect) -> str:
    return "Comfy" if dialect.name == CLOUD_DIALECT_NAME else dialect.name


LARGE_BODY = 8 * 2**20
"""A request body this large that is cut off is reported as a refusal of its size."""


@contextlib.contextmanager
def translating_transport_errors(
    request: httpx.Request, secrets: Sequence[str | None], server: str = "Comfy"
) -> Iterator[None]:
    """Raise `ComfyTransportError` (redacted, no chained cause) for an httpx transport error.

    A body that cannot be decoded (a broken gzip stream) is a `ComfyProtocolError`.
    """
    try:
        yield
    except httpx.DecodingError as exc:
        raise ComfyProtocolError(
            redact(
                f"{server} answered {request.method} {quiet_url(request.url)} with a body that "
                f"cannot be decoded: {exc}",
                secrets,
            )
        ) from None
    except httpx.TransportError as exc:
        size = request.headers.get("Content-Length", "")
        if (
            size.isdigit()
            and int(size) >= LARGE_BODY
            and not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        ):  # reached, then cut off while a large body went up: a refusal of its size
            raise ComfyTransportError(
                redact(
                    f"{server} closed the connection during {request.method} "
                    f"{quiet_url(request.url)} with a {int(size) / 2**20:,.0f} MB body "
                    f"({type(exc).__name__}): the server likely refuses requests that large; "
                    "make the workflow or file smaller, or raise the server's request size limit",
                    secrets,
                )
            ) from None
        raise ComfyTransportError(
            redact(
                f"Could not reach {server} on {request.method} {quiet_url(request.url)}: "
                f"{type(exc).__name__}: {exc}",
                secrets,
            )
        ) from None
