"""The one event loop of the waiting layer: a daemon thread that owns every shared stream.

Prefect runs sync tasks in worker threads, each with an event loop of its own, and async code may
run several loops too. A stream opened in one of those loops could not serve waits in another, so
the process-wide hubs (:meth:`EventHub.shared <prefect_comfy.waiting.hub.EventHub.shared>`) live on
this loop instead; a wait in any loop registers here and gets its outcome handed back to its own
loop. A forked child starts a loop of its own on first use.

Example:
    >>> loop = waiting_loop()
    >>> loop.is_running() and loop is waiting_loop()
    True
"""

from __future__ import annotations

import asyncio
import os
import threading

__all__ = ["waiting_loop"]

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None


def waiting_loop() -> asyncio.AbstractEventLoop:
    """The running loop of the waiting layer's daemon thread (started on first use)."""
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or _loop.is_closed():
            loop = asyncio.new_event_loop()
            started = threading.Event()
            loop.call_soon(started.set)
            thread = threading.Thread(
                target=loop.run_forever, name="prefect-comfy-waiting", daemon=True
            )
            thread.start()
            started.wait()
            _loop, _pid = loop, os.getpid()
        return _loop
