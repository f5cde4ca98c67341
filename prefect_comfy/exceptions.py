"""The one error tree of prefect-comfy.

Every error the package raises derives from `ComfyError`, split by the kind of failure::

    ComfyError
    ├── ComfyConfigError            usage: missing key, bad URL, a workflow that is not a graph
    │   └── CatalogUnavailable      no node catalog to convert or check a workflow with
    ├── InvalidWorkflow             the server (or a local check) refused the graph; ``node_errors``
    │   ├── InvalidInputs           an input by name is unknown, ambiguous or out of the catalog's range
    │   └── UnknownNodeType         a node's class the server's catalog lacks: ``node_id``, ``title``
    ├── ComfyTransportError         connect/read/write failures and timeouts (retryable)
    ├── ComfyAPIError               an HTTP error answer: ``status_code``, ``error_code``, ``details``
    │   ├── AuthenticationError     401 / 403: the API key is wrong or lacks rights
    │   ├── NotFound                404
    │   ├── InvalidRequest          400 / 409 / 422 (never retried)
    │   ├── RateLimited             429, ``retry_after`` seconds (retryable)
    │   │   └── TooManyStreams      429 ``too_many_streams``: the server caps open event streams
    │   └── ServerError             5xx (retryable)
    ├── ComfyProtocolError          a frame or body that breaks the protocol
    │   └── ResponseTooLarge        an answer or download over its size limit (never retried)
    ├── WebSocketError
    │   ├── WebSocketAuthError      the handshake was refused for the key (also close 1008/4001/4003)
    │   └── WebSocketConnectionError  the stream is gone and the reconnect budget is spent
    └── OutcomeError                a job or upload ended, or a wait ended, without success
        ├── JobFailed               ``error_code``, ``error_message``, ``node_id``
        ├── JobCancelled
        ├── JobLost                 the server no longer knows the job (a ComfyUI restart); retryable
        ├── UploadFailed            an input or model ended ``failed``
        └── WaitTimedOut            also a `TimeoutError`; names the resource and its last state
            └── JobTimedOut

`is_retryable` is the one rule that REST retries, reconnects and Prefect task retries all use.
No message in this tree ever contains an API key: the client redacts before it raises.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "CatalogUnavailable",
    "ComfyAPIError",
    "ComfyConfigError",
    "ComfyError",
    "ComfyProtocolError",
    "ComfyTransportError",
    "InvalidInputs",
    "InvalidRequest",
    "InvalidWorkflow",
    "JobCancelled",
    "JobFailed",
    "JobLost",
    "JobTimedOut",
    "NotFound",
    "OutcomeError",
    "RateLimited",
    "ResponseTooLarge",
    "ServerError",
    "TooManyStreams",
    "UnknownNodeType",
    "UploadFailed",
    "WaitTimedOut",
    "WebSocketAuthError",
    "WebSocketConnectionError",
    "WebSocketError",
    "is_retryable",
]


class ComfyError(Exception):
    """Root of every error raised by prefect-comfy."""


class ComfyConfigError(ComfyError):
    """The caller's configuration or arguments cannot work (missing key, bad URL, bad argument)."""


class InvalidWorkflow(ComfyError):
    """The workflow graph was refused.

    Attributes:
        node_errors: one entry per problem, each ``{"node_id", "class_type"?, "field"?, "message"}``.
    """

    def __init__(self, message: str, node_errors: list[dict[str, Any]] | None = None) -> None:
        self.node_errors = list(node_errors or [])
        if self.node_errors:
            lines = []
            for err in self.node_errors:
                where = (
                    f"node {err.get('node_id')}" if err.get("node_id") is not None else "workflow"
                )
                if err.get("class_type"):
                    where += f" ({err['class_type']})"
                if err.get("field"):
                    where += f", input {err['field']!r}"
                lines.append(f"  - {where}: {err.get('message', '')}")
            message = message + "\n" + "\n".join(lines)
        super().__init__(message)


class CatalogUnavailable(ComfyConfigError):
    """No node catalog could be had: none is configured for this kind of server, or it cannot be
    read (unreachable, not JSON, not a catalog). The message says what to set; nothing was submitted.
    """


class InvalidInputs(InvalidWorkflow):
    """An input given by name does not fit the workflow or the node catalog; nothing was submitted.

    Each entry of ``node_errors`` names the input and what is wrong (unknown or ambiguous node,
    unknown input, wrong type, out of range, not one of the choices), with the candidates.
    """


class UnknownNodeType(InvalidWorkflow):
    """A node's class type is not in the server's node catalog.

    The converter raises it without knowing which server it asked; the caller that fetched the
    catalog adds that (``str(exc)`` plus the server's name).

    Attributes:
        node_id: the node's id in the workflow (``"12"``, or ``"5:3"`` inside a subgraph).
        title: the node's title in the editor, or ``None``.
        class_type: the class the catalog lacks.
    """

    def __init__(
        self, node_id: str, class_type: str, title: str | None = None, *, message: str | None = None
    ) -> None:
        self.node_id = node_id
        self.title = title
        self.class_type = class_type
        named = f" {title!r}" if title and title != class_type else ""
        super().__init__(
            message
            or (
                f"Node {node_id}{named} is of type {class_type!r}, which the server does not "
                "know; install the custom node that provides it, or remove the node"
            )
        )


class ComfyTransportError(ComfyError):
    """The request or connection failed below HTTP: refused, reset, timed out. Retryable."""


class ComfyAPIError(ComfyError):
    """The server answered with an HTTP error.

    Attributes:
        status_code: the HTTP status.
        error_code: the API's machine-readable code (``not_found``, ``rate_limited`` …) if given.
        details: the API's ``details`` list, if given.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_code: str | None = None,
        details: list[Any] | None = None,
    ) -> None:
        self.status_code = status_code
        self.error_code = error_code
        self.details = list(details or [])
        super().__init__(message)


class AuthenticationError(ComfyAPIError):
    """401 or 403: the API key is missing, wrong, revoked, or lacks the rights for this call."""


class NotFound(ComfyAPIError):
    """404: the job, input, model or output does not exist (or belongs to another account)."""


class InvalidRequest(ComfyAPIError):
    """400, 409 or 422: the request itself is wrong; retrying it cannot help."""


class RateLimited(ComfyAPIError):
    """429: too many requests. ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)


class TooManyStreams(RateLimited):
    """429 ``too_many_streams``: the server already holds as many event streams as it allows.

    ``retry_after`` says when a slot may be free; meanwhile read the job over REST.
    """


class ServerError(ComfyAPIError):
    """5xx: the server failed. Retryable."""


class ComfyProtocolError(ComfyError):
    """A frame or body that does not follow the protocol (not JSON, no ``type``, wrong shape)."""


class ResponseTooLarge(ComfyProtocolError):
    """An answer or a download was larger than the limit set for it; the rest was not read."""


class WebSocketError(ComfyError):
    """Base of the event-stream errors (names kept from Comfy's own Python SDK)."""


class WebSocketAuthError(WebSocketError):
    """The event stream refused the API key (HTTP 401/403 on the handshake, or close 1008/4001/4003)."""


class WebSocketConnectionError(WebSocketError):
    """The event stream could not be (re)opened within the reconnect budget."""


class OutcomeError(ComfyError):
    """A job or upload ended without success, or the wait for it ended first.

    Attributes:
        resource_id: the job, input or model id.
        status: the last known status.
    """

    kind = "resource"

    def __init__(self, message: str, *, resource_id: str, status: str | None = None) -> None:
        self.resource_id = resource_id
        self.status = status
        super().__init__(message)

    @property
    def job_id(self) -> str:
        """The resource id (named for the common case of a job)."""
        return self.resource_id


class JobFailed(OutcomeError):
    """The Comfy job ended ``failed``; ``error_code``, ``error_message`` and ``node_id`` say why."""

    kind = "job"

    def __init__(
        self,
        job_id: str,
        *,
        error_code: str | None = None,
        error_message: str | None = None,
        node_id: str | None = None,
    ) -> None:
        self.error_code = error_code
        self.error_message = error_message
        self.node_id = node_id
        where = f" at node {node_id}" if node_id else ""
        super().__init__(
            f"Comfy job {job_id} failed{where}: [{error_code or 'unknown'}] {error_message or ''}".rstrip(),
            resource_id=job_id,
            status="failed",
        )


class JobCancelled(OutcomeError):
    """The Comfy job ended ``cancelled``."""

    kind = "job"

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"Comfy job {job_id} was cancelled", resource_id=job_id, status="cancelled"
        )


class JobLost(OutcomeError):
    """The Comfy server no longer knows a job it had accepted: it was lost, not cancelled.

    A self-hosted ComfyUI forgets its queue and the prompts it was running when it restarts. The
    job never ran to an end, so submitting it again may succeed: `is_retryable` says so, and
    the Prefect event is ``comfy.job.lost`` (never ``comfy.job.cancelled``).
    """

    kind = "job"

    def __init__(self, job_id: str, *, reason: str | None = None) -> None:
        self.reason = reason
        super().__init__(
            f"Comfy job {job_id} was lost by the server ({reason or 'it no longer exists there'}); "
            "submit it again",
            resource_id=job_id,
            status="lost",
        )


class UploadFailed(OutcomeError):
    """An input or model upload ended ``failed``."""

    def __init__(
        self,
        kind: str,
        resource_id: str,
        *,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> None:
        self.kind = kind
        self.error_code = error_code
        self.error_message = error_message
        super().__init__(
            f"Comfy {kind} {resource_id} failed: [{error_code or 'unknown'}] {error_message or ''}".rstrip(),
            resource_id=resource_id,
            status="failed",
        )


class WaitTimedOut(OutcomeError, TimeoutError):
    """The wait ended before the resource reached a final state; it names the last known state."""

    def __init__(self, kind: str, resource_id: str, *, timeout: float, status: str | None) -> None:
        self.kind = kind
        self.timeout = timeout
        super().__init__(
            f"Timed out after {timeout:g}s waiting for Comfy {kind} {resource_id} "
            f"(last known status: {status or 'unknown'})",
            resource_id=resource_id,
            status=status,
        )


class JobTimedOut(WaitTimedOut):
    """The wait for a job ended first. The job itself may still be running unless it was cancelled."""

    def __init__(self, job_id: str, *, timeout: float, status: str | None) -> None:
        super().__init__("job", job_id, timeout=timeout, status=status)


def is_retryable(exc: BaseException) -> bool:
    """Whether repeating the same call may succeed: the one rule every retry loop uses.

    Transport failures, 429, 5xx and a job the server lost are retryable; every other API error, every
    usage error and every other job outcome is not.
    """
    if isinstance(exc, (ComfyTransportError, RateLimited, ServerError, JobLost)):
        return True
    return bool(isinstance(exc, WebSocketConnectionError))
