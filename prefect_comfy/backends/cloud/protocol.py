"""The developer API's WebSocket protocol as plain code: frames in, frames out, no I/O.

Frames (all JSON text objects with a ``type``), as pinned in the project's protocol reference:

- server → client: ``connected`` {session_id}; ``subscribed`` {events}; ``unsubscribed`` {events};
  ``event`` (``id``?, ``timestamp``, ``data``: {event, payload}); ``pong``; ``error`` {code, message}.
- client → server: ``subscribe`` {events}; ``unsubscribe`` {events}; ``ping``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from prefect_comfy.backends.base import matches as matches  # re-exported: the pattern syntax
from prefect_comfy.backends.base import matches_any as matches_any
from prefect_comfy.backends.base import validate_pattern as validate_pattern
from prefect_comfy.exceptions import ComfyProtocolError
from prefect_comfy.models import ComfyEvent

EVENT_NAMES: tuple[str, ...] = (
    "job.progress",
    "job.completed",
    "job.failed",
    "job.cancelled",
    "input.ready",
    "input.failed",
    "model.ready",
    "model.failed",
)
"""The event names the developer API documents (unknown names are passed through all the same)."""

AUTH_CLOSE_CODES: frozenset[int] = frozenset({1008, 4001, 4003})
"""Close codes that mean the key was refused (lenient: the real service may use any of them)."""


@dataclass(frozen=True)
class Frame:
    """One decoded server frame."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def event(self) -> ComfyEvent:
        """The `ComfyEvent` of an ``event`` frame."""
        if self.type != "event":
            raise ComfyProtocolError(f"not an event frame: {self.type!r}")
        name = self.data.get("event")
        payload = self.data.get("payload", {})
        if not isinstance(name, str) or not isinstance(payload, dict):
            raise ComfyProtocolError("event frame without a string 'event' and an object 'payload'")
        event_id = self.raw.get("id") if isinstance(self.raw.get("id"), str) else None
        try:
            return ComfyEvent(
                event=name, payload=payload, id=event_id, timestamp=self.raw.get("timestamp")
            )
        except ValidationError:  # an unreadable timestamp must not lose the event
            pass
        try:
            return ComfyEvent(event=name, payload=payload, id=event_id)
        except ValidationError as exc:
            raise ComfyProtocolError(f"event frame that does not fit: {exc.errors()[:1]}") from None


def decode(text: str | bytes) -> Frame:
    """Decode one server frame; raise `ComfyProtocolError` for anything malformed."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ComfyProtocolError("binary frame is not UTF-8 JSON") from exc
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ComfyProtocolError(f"frame is not JSON: {text[:80]!r}") from exc
    except RecursionError:  # a frame nested thousands deep: refused, never a crash of the reader
        raise ComfyProtocolError(f"frame is nested too deeply: {text[:80]!r}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ComfyProtocolError(f"frame without a string 'type': {str(obj)[:80]!r}")
    data = obj.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ComfyProtocolError(f"frame {obj['type']!r} has non-object 'data'")
    return Frame(type=obj["type"], data=data, raw=obj)


def subscribe_frame(patterns: Iterable[str]) -> str:
    """The text of a ``subscribe`` frame."""
    return json.dumps({"type": "subscribe", "data": {"events": list(patterns)}})


def unsubscribe_frame(patterns: Iterable[str]) -> str:
    """The text of an ``unsubscribe`` frame (an extension; the client never relies on it)."""
    return json.dumps({"type": "unsubscribe", "data": {"events": list(patterns)}})


PING_FRAME = json.dumps({"type": "ping"})
PONG_FRAME = json.dumps({"type": "pong"})
