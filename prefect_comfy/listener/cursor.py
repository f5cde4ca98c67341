"""The listener's durable cursor: what it saw in flight, kept across its own restarts.

The Comfy event stream has no replay, so a listener that is killed forgets the jobs and uploads it
saw in flight, and their terminal events would never reach Prefect. The cursor is a small JSON
document, saved at most every `SAVE_INTERVAL` seconds while something changed, and at a stop:

- ``in_flight``: ``[kind, id, status]`` of every job, input and model last seen in flight, plus
  those whose terminal event was received but not yet sent to Prefect;
- ``watermark``: the wall-clock time (UTC) up to which the listener was connected and listening;
- ``ended``: ``[kind, id]`` of the newest `ENDED_SAVED` resources whose terminal event was sent,
  so that the catch-up after a restart does not send them again (a repeat is stored once, but
  Prefect's triggers remember event ids only for a while).

On start the listener reads the cursor, reconciles each entry through REST and lists what changed
since the watermark (`prefect_comfy.listener.catchup`); `CursorKeeper`
does the reading and saving. Two places to keep it, the user's choice:

- a state file (`FileCursor`, the default), written atomically (a temporary file in the
  same folder, flushed to disk, then renamed over the old one), under
  ``$PREFECT_HOME/comfy-listener/`` (``~/.prefect-comfy/`` when Prefect has no home);
- a Prefect variable (`VariableCursor`, ``variable:NAME``), for a listener without a
  persistent disk. A variable holds at most 5,000 characters: past that, the newest entries are
  kept, a warning is logged, and the rest is left to the catch-up by time.

Example:
    >>> import asyncio, tempfile, os
    >>> cursor = FileCursor(os.path.join(tempfile.mkdtemp(), "c.json"))
    >>> asyncio.run(cursor.save(CursorState("http://127.0.0.1:1", [("job", "job_1", "running")])))
    >>> asyncio.run(cursor.load()).in_flight
    [('job', 'job_1', 'running')]
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from prefect_comfy.exceptions import ComfyConfigError
from prefect_comfy.settings import environment_value

logger = logging.getLogger(__name__)

__all__ = [
    "CURSOR_ENV",
    "SAVE_INTERVAL",
    "Cursor",
    "CursorState",
    "FileCursor",
    "VariableCursor",
    "default_cursor_path",
    "open_cursor",
]

CURSOR_ENV = "COMFY_LISTENER_CURSOR"
"""Where the cursor lives: a file path, ``variable:NAME`` (a Prefect variable) or ``none``
(documented as `prefect_comfy.settings.ComfySettings.listener_cursor`)."""
SAVE_INTERVAL = 1.0
"""Seconds between two saves of a changed cursor (a SIGKILL loses at most this much)."""
FORMAT_VERSION = 1
ENDED_SAVED = 1_000
"""Resources whose terminal event was sent, remembered in the cursor (newest first kept)."""
IN_FLIGHT_LOADED = 100_000
"""Resources in flight read from a cursor at most (the newest kept)."""
MAX_FILE_BYTES = 32 * 2**20
"""A state file larger than this is not read (the listener writes well under 1 MB)."""
_VARIABLE_LIMIT = 5_000
"""Characters a Prefect variable's value may hold (``prefect.types.MAX_VARIABLE_VALUE_LENGTH``)."""

Entry = tuple[str, str, str]
"""``(kind, id, status)`` of one resource in flight."""


@dataclass
class CursorState:
    """What the cursor holds."""

    address: str
    """The Comfy server it belongs to (a cursor of another server is ignored)."""
    in_flight: list[Entry] = field(default_factory=list)
    watermark: datetime | None = None
    """Up to when the listener was connected (UTC); ``None`` if it never was."""
    ended: list[tuple[str, str]] = field(default_factory=list)
    """``(kind, id)`` of resources whose terminal event was sent, oldest first."""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "address": self.address,
            "watermark": self.watermark.isoformat() if self.watermark else None,
            "in_flight": [list(e) for e in self.in_flight],
            "ended": [list(e) for e in self.ended],
        }

    @classmethod
    def from_json(cls, data: Any) -> CursorState:
        """Parse a saved cursor.

        Raises:
            ValueError: it is not a cursor this version wrote.
        """
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise ValueError("not a listener cursor of format version 1")
        raw_in_flight, raw_ended = data.get("in_flight") or [], data.get("ended") or []
        if not isinstance(raw_in_flight, list) or not isinstance(raw_ended, list):
            raise ValueError("'in_flight' and 'ended' must be lists")
        entries = [
            (str(e[0]), str(e[1]), str(e[2]))
            for e in raw_in_flight[-IN_FLIGHT_LOADED:]
            if isinstance(e, list) and len(e) == 3 and e[0] in ("job", "input", "model")
        ]
        ended = [
            (str(e[0]), str(e[1]))
            for e in raw_ended[-ENDED_SAVED:]
            if isinstance(e, list) and len(e) == 2
        ]
        return cls(
            address=str(data.get("address") or ""),
            in_flight=entries,
            ended=ended,
            watermark=_watermark(data.get("watermark")),
        )


def _watermark(value: Any) -> datetime | None:
    """A saved watermark, always aware: one without a time zone (a hand edit) is UTC."""
    if not value:
        return None
    if not isinstance(value, str):
        raise ValueError(f"the watermark {value!r} is not an ISO 8601 time")
    when = datetime.fromisoformat(value)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class Cursor(Protocol):
    """Where a `CursorState` is kept."""

    description: str

    async def load(self) -> CursorState | None:
        """The saved state, or ``None`` if there is none (or it cannot be read: logged)."""

    async def save(self, state: CursorState) -> None:
        """Replace the saved state (an error is raised; the listener logs it and tries again)."""

    def missing(self) -> bool:
        """Whether a state saved before is gone (a file deleted under the listener); optional."""


class FileCursor:
    """A cursor in a JSON file, replaced atomically on every save.

    Args:
        path: the file; its folder is created when missing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self.description = f"state file {self.path}"

    async def load(self) -> CursorState | None:
        try:
            size = self.path.stat().st_size
            if size > MAX_FILE_BYTES:
                logger.warning(
                    "ignoring the listener cursor %s: %d bytes, more than a listener writes "
                    "(%d at most); it will be replaced",
                    self.path,
                    size,
                    MAX_FILE_BYTES,
                )
                return None
            text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return CursorState.from_json(json.loads(text))
        except ValueError as exc:
            logger.warning(
                "ignoring the listener cursor %s (%s); it will be replaced", self.path, exc
            )
            return None

    async def save(self, state: CursorState) -> None:
        await asyncio.to_thread(self._write, json.dumps(state.to_json(), separators=(",", ":")))

    def missing(self) -> bool:
        return not self.path.exists()

    def _write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __repr__(self) -> str:
        return f"FileCursor({str(self.path)!r})"


class VariableCursor:
    """A cursor in a Prefect variable (JSON value, at most 5,000 characters).

    Args:
        name: the variable's name (letters, digits, dashes and underscores).
    """

    def __init__(self, name: str) -> None:
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ComfyConfigError(
                f"{name!r} is not a Prefect variable name: use letters, digits, '-' and '_', "
                "as in --cursor variable:comfy-listener-cursor"
            )
        self.name = name
        self.description = f"Prefect variable {name}"

    async def load(self) -> CursorState | None:
        from prefect.variables import Variable

        value = await Variable.aget(self.name, default=None)
        if value is None:
            return None
        try:
            return CursorState.from_json(value)
        except ValueError as exc:
            logger.warning("ignoring the Prefect variable %s (%s)", self.name, exc)
            return None

    async def save(self, state: CursorState) -> None:
        from prefect.variables import Variable

        value = state.to_json()
        del value["ended"][: max(0, len(value["ended"]) - 20)]  # room for what is in flight
        entries = value["in_flight"]
        dropped = 0
        while entries and len(json.dumps(value)) > _VARIABLE_LIMIT:  # spaced: stricter than Prefect
            cut = max(1, len(entries) // 10)
            del entries[:cut]  # the oldest first
            dropped += cut
        if dropped:
            logger.warning(
                "the Prefect variable %s holds only the newest %d of %d resources in flight; "
                "use a state file (--cursor PATH) to keep them all",
                self.name,
                len(entries),
                len(entries) + dropped,
            )
        await Variable.aset(self.name, value, overwrite=True)

    def missing(self) -> bool:
        return False  # a variable deleted by hand is written again at the next change

    def __repr__(self) -> str:
        return f"VariableCursor({self.name!r})"


def default_cursor_path(connection_key: str, name: str | None = None) -> Path:
    """``$PREFECT_HOME/comfy-listener/<name or default>-<hash of the server and key>.json``.

    The hash is over the backend's connection key (itself a hash of the API key, never the key).
    """
    from prefect.settings import PREFECT_HOME

    try:
        home = Path(PREFECT_HOME.value()).expanduser()
    except Exception:  # no Prefect home: our own
        home = Path("~/.prefect-comfy").expanduser()
    digest = hashlib.sha256(connection_key.encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in (name or "default"))
    return home / "comfy-listener" / f"{slug}-{digest}.json"


def open_cursor(spec: str | None, *, connection_key: str, name: str | None = None) -> Cursor | None:
    """The cursor ``spec`` names: a path, ``variable:NAME``, ``none``; empty: ``COMFY_LISTENER_CURSOR``,
    else the default state file (`default_cursor_path`).

    Raises:
        ComfyConfigError: a variable name that Prefect would refuse.
    """
    spec = (spec if spec is not None else environment_value(CURSOR_ENV) or "").strip()
    if spec.lower() in ("none", "off"):
        return None
    if spec.startswith("variable:"):
        return VariableCursor(spec.removeprefix("variable:"))
    if spec:
        return FileCursor(spec)
    return FileCursor(default_cursor_path(connection_key, name))
