"""What differs between kinds of Comfy server at the HTTP level, as data: a `Dialect`.

The one HTTP session (`HttpSession`) is the same for every
server; a dialect tells it which header carries the key, which URLs may carry it, how error bodies
read, which statuses are worth a retry, and which answer means "the workflow was refused". A new kind
of server is one more ``Dialect(...)`` in its backend package.

Example:
    >>> d = Dialect(name="Demo", key_header="X-Key", key_path_prefix="/api")
    >>> d.key_value("k"), d.retries(503), d.retries(404)
    ('k', True, False)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_RETRY_STATUSES", "Dialect", "ErrorReader", "WorkflowErrorHook"]

DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({429, *range(500, 600)})
"""Statuses that a retry may cure: rate limits and server errors."""

WorkflowErrorHook = Callable[[int, Any], "Exception | None"]
"""``(status, decoded body) -> error or None``: how a server says "this workflow is refused"."""
ErrorReader = Callable[[Any, str], "tuple[str | None, str, list[Any]]"]
"""``(decoded body, reason phrase) -> (code, message, details)`` of an error answer."""


@dataclass(frozen=True)
class Dialect:
    """How one kind of Comfy server speaks HTTP.

    Attributes:
        name: the server's name in messages ("Comfy API", "ComfyUI").
        key_header: the header that carries the API key.
        key_prefix: what goes before the key in that header (``"Bearer "``).
        key_path_prefix: the key goes only to the server's origin, and there only to paths under
            this prefix (``None``: any path of the origin).
        auth_hint: what the user should check when the key is refused.
        retry_statuses: HTTP statuses that are worth trying again (429 and 5xx by default; any
            other 5xx is a `ComfyAPIError` that is not retried).
        workflow_error: turns a refused workflow submission into ``InvalidWorkflow`` (or ``None``
            when the answer is something else).
        read_error: reads ``(code, message, details)`` from a decoded error body; ``None`` is the
            lenient default (`fields_from_body`), which
            knows ``{"error": {"code"|"type", "message", "details"}}``, ``{"detail": …}`` and text.
    """

    name: str
    key_header: str
    key_prefix: str = ""
    key_path_prefix: str | None = None
    auth_hint: str = "check the API key"
    retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES
    workflow_error: WorkflowErrorHook | None = None
    read_error: ErrorReader | None = None

    def key_value(self, key: str) -> str:
        """The header value that carries ``key``."""
        return f"{self.key_prefix}{key}"

    def retries(self, status: int) -> bool:
        """Whether an answer with this status is worth another attempt."""
        return status in self.retry_statuses
