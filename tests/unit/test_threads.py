"""prefect_comfy.transport.threads: a started thread sees its caller's context, Prefect's settings included."""

from __future__ import annotations

import contextvars
import threading
from typing import Any

from prefect.settings import PREFECT_API_URL, temporary_settings

from prefect_comfy.transport.threads import start_thread

marker: contextvars.ContextVar[Any] = contextvars.ContextVar("marker", default=None)


def test_the_thread_sees_the_callers_context_and_prefect_settings() -> None:
    seen: list[Any] = []
    with temporary_settings({PREFECT_API_URL: "http://settings.invalid/api"}):
        token = marker.set("caller")
        try:
            start_thread(
                lambda: seen.append((marker.get(), PREFECT_API_URL.value())), name="t"
            ).join()
        finally:
            marker.reset(token)
    assert seen == [("caller", "http://settings.invalid/api")]


def test_a_plain_thread_would_not() -> None:
    # Why the module exists: a plain thread starts with empty context variables.
    seen: list[Any] = []
    token = marker.set("caller")
    try:
        thread = threading.Thread(target=lambda: seen.append(marker.get()))
        thread.start()
        thread.join()
    finally:
        marker.reset(token)
    assert seen == [None]


def test_the_thread_is_named_and_a_daemon_by_default() -> None:
    done = threading.Event()
    thread = start_thread(done.wait, 5, name="prefect-comfy-test")
    try:
        assert thread.name == "prefect-comfy-test"
        assert thread.daemon
    finally:
        done.set()
        thread.join()
