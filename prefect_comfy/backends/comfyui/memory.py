"""What the backends of a process know of one ComfyUI server between calls.

Every backend with the same `connection_key` gets the same `ServerMemory`
(`ServerMemory.of`, held weakly: it goes when the last such backend goes), so that the
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
from dataclasses import dataclass, field
from typing import Any, Protocol

from prefect_comfy.bounded import Bounded
from prefect_comfy.models import ComfyEvent

__all__ = ["MODEL_WATCH_TTL", "REMEMBERED", "Bounded", "ServerMemory"]

REMEMBERED = 10_000
"""Prompt ids remembered (tags, seen history, emitted outcomes)."""
MODEL_WATCH_TTL = 3600.0
"""A model watch not renewed by a ``get_model`` for this long is dropped."""


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
    tags: Bounded = field(default_factory=lambda: Bounded(REMEMBERED))
    graphs: Bounded = field(default_factory=lambda: Bounded(1024))
    cancelled: Bounded = field(default_factory=lambda: Bounded(REMEMBERED))
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
