"""What the backends of a process know of one ComfyUI server between calls.

Every backend with the same :attr:`connection_key` gets the same :class:`ServerMemory`
(:meth:`ServerMemory.of`, held weakly: it goes when the last such backend goes), so that the
waiting layer's stream sees what any backend of the process did: the graphs and tags of prompts it
submitted (for progress and event payloads), the pending prompts it deleted (they answer
``cancelled``, not "not found"), the model files a wait is watching for, and the streams open
(so that an event a backend makes up, such as ``job.cancelled`` for a deleted prompt, reaches them
at once). It shares knowledge, not connections: which stream serves which wait is the waiting
layer's business alone.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from prefect_comfy.models import ComfyEvent

__all__ = ["MODEL_WATCH_TTL", "REMEMBERED", "Bounded", "ServerMemory"]

REMEMBERED = 10_000
"""Prompt ids remembered (tags, seen history, emitted outcomes)."""
MODEL_WATCH_TTL = 3600.0
"""A model watch not renewed by a ``get_model`` for this long is dropped."""


class Bounded(OrderedDict):
    """A dict that forgets its oldest entries past ``size``.

    Written from two threads (a backend's caller and the waiting layer's loop): :meth:`remember` and
    :meth:`take` hold a lock; a single read (``in``, ``get``) is atomic anyway.
    """

    def __init__(self, size: int = REMEMBERED) -> None:
        super().__init__()
        self.size = size
        self._lock = threading.Lock()

    def remember(self, key: Any, value: Any = None, *, replace: bool = True) -> None:
        """Store ``key`` as the newest entry (keep an existing value unless ``replace``)."""
        with self._lock:
            if replace or key not in self:
                self[key] = value
            self.move_to_end(key)
            while len(self) > self.size:
                self.popitem(last=False)

    def take(self, key: Any) -> Any:
        """Remove and return ``key``'s value (``None`` when absent)."""
        with self._lock:
            return self.pop(key, None)


class Listener(Protocol):
    """An open stream that takes events and model watches from its backend (on its own loop)."""

    def publish(self, event: ComfyEvent) -> None: ...
    def models_changed(self) -> None: ...


_memories: weakref.WeakValueDictionary[str, ServerMemory] = weakref.WeakValueDictionary()
_memories_lock = threading.Lock()


@dataclass(eq=False)
class ServerMemory:
    """Shared by the ComfyUI backends of one server, key and client id (thread-safe where it matters)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    tags: Bounded = field(default_factory=Bounded)
    graphs: Bounded = field(default_factory=lambda: Bounded(1024))
    cancelled: Bounded = field(default_factory=Bounded)
    model_watches: dict[str, tuple[str, str, str | None, float]] = field(default_factory=dict)
    streams: set[Listener] = field(default_factory=set)
    connections_opened: int = 0

    @classmethod
    def of(cls, connection_key: str) -> ServerMemory:
        """The memory of the backends with this connection key (made on first use)."""
        with _memories_lock:
            memory = _memories.get(connection_key)
            if memory is None:
                memory = _memories[connection_key] = cls()
            return memory

    def note_submitted(self, prompt_id: str, tags: list[str], graph: dict[str, Any]) -> None:
        self.tags.remember(prompt_id, list(tags))
        self.graphs.remember(prompt_id, graph)

    def publish(self, event: ComfyEvent) -> None:
        """Hand an event the backend made up (a deleted pending job, an upload) to open streams."""
        with self.lock:
            streams = list(self.streams)
        for stream in streams:
            stream.publish(event)

    def watch_model(self, model_id: str, folder: str, filename: str, type: str | None) -> None:
        """Watch a model folder until the file appears (the streams poll for it)."""
        with self.lock:
            self.model_watches[model_id] = (
                folder,
                filename,
                type,
                time.monotonic() + MODEL_WATCH_TTL,
            )
            streams = list(self.streams)
        for stream in streams:
            stream.models_changed()

    def current_watches(self) -> dict[str, tuple[str, str, str | None, float]]:
        """The model watches still wanted (expired ones dropped)."""
        now = time.monotonic()
        with self.lock:
            for mid in [m for m, w in self.model_watches.items() if w[3] < now]:
                del self.model_watches[mid]
            return dict(self.model_watches)

    def unwatch_model(self, model_id: str) -> None:
        with self.lock:
            self.model_watches.pop(model_id, None)
