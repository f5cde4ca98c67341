"""Threads that carry the context of the code that starts them.

A new `threading.Thread` starts with empty context variables. Prefect keeps its settings
(the API URL among them) in one, so a thread started under ``temporary_settings`` (or inside a
flow run, or in a program that set ``PREFECT_API_URL`` after importing Prefect) would read
Prefect's import-time settings instead: without an API URL there, ``get_client()`` starts a
temporary local server of its own. Every thread this package starts is started here, in a copy of
the starting code's context (as `asyncio.to_thread` does for its calls).

Example:
    >>> import contextvars
    >>> colour = contextvars.ContextVar("colour", default="none")
    >>> seen = []
    >>> token = colour.set("red")
    >>> start_thread(lambda: seen.append(colour.get()), name="example").join()
    >>> seen
    ['red']
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["start_thread"]


def start_thread(
    target: Callable[..., Any], *args: Any, name: str, daemon: bool = True
) -> threading.Thread:
    """Start ``target(*args)`` in a new thread that sees this thread's context variables.

    Args:
        target: what the thread runs.
        *args: its arguments.
        name: the thread's name (it shows in tracebacks and ``py-spy``).
        daemon: whether the thread dies with the process instead of keeping it alive.

    Returns:
        The started thread.
    """
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target, *args), name=name, daemon=daemon)
    thread.start()
    return thread
