"""Run a `ComfyListener` as a process: where its backend
and cursor come from, and a clean stop on SIGTERM and SIGINT.

The listener itself (reading, tracking, sending) knows nothing of signals or saved blocks; this
module is what ``prefect-comfy listen`` and `prefect_comfy.listener.run_listener` call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.listener.cancels import SuspendedRunCanceller
from prefect_comfy.listener.cursor import Cursor, open_cursor
from prefect_comfy.listener.forwarder import ComfyListener
from prefect_comfy.listener.sender import require_prefect_api_url
from prefect_comfy.listener.stats import ListenerStats

logger = logging.getLogger(__name__)

__all__ = ["run_listener"]


async def run_listener(
    backend: ComfyBackend | None = None,
    patterns: Sequence[str] = ("*",),
    *,
    block: str | None = None,
    install_signal_handlers: bool = True,
    cursor: Cursor | str | None = "",
    cancel_suspended: bool = True,
    **options: Any,
) -> ListenerStats:
    """Run a `ComfyListener` until SIGTERM or SIGINT (or cancellation); return its stats.

    Args:
        backend: the Comfy backend; if omitted, from the saved credentials block ``block``
            (``ComfyCloudCredentials``, ``ComfyUIServer`` or ``ComfyV2Credentials``), else from
            ``COMFY_API_KEY`` / ``COMFY_BASE_URL``. On Comfy API v2 the listener follows jobs one
            by one (`JobFollower`).
        patterns: event patterns to subscribe to.
        block: the name of a saved credentials block.
        install_signal_handlers: stop cleanly on SIGTERM and SIGINT.
        cursor: a `Cursor`, or where to keep one: a file path,
            ``variable:NAME`` (a Prefect variable) or ``"none"``; ``""`` (the default):
            ``COMFY_LISTENER_CURSOR``, else a state file under ``$PREFECT_HOME/comfy-listener/``.
            ``None``: no cursor.
        cancel_suspended: also cancel the Comfy jobs of suspended flow runs that are cancelled
            (`prefect_comfy.listener.cancels`); not with a given ``events_client``.
        **options: passed to `ComfyListener` (``heartbeat_interval``, ``listener_id`` …).

    Raises:
        ComfyConfigError: no Prefect API URL, or no Comfy credentials.
    """
    if options.get("events_client") is None:
        require_prefect_api_url()
    owned = backend is None
    if backend is None:
        backend = await _backend_from(block)
    try:
        if isinstance(cursor, str):
            cursor = open_cursor(
                cursor or None,
                connection_key=backend.connection_key,
                name=options.get("listener_id"),
            )
        listener = ComfyListener(backend, patterns, cursor=cursor, **options)
    except BaseException:  # a bad option: the backend this made is closed
        if owned:
            await backend.aclose()
        raise
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    if install_signal_handlers:
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, _on_signal, listener, sig)
                installed.append(sig)
    canceller = None
    if cancel_suspended and options.get("events_client") is None:
        canceller = asyncio.create_task(SuspendedRunCanceller(backend).run())
    try:
        await listener.run()
    finally:
        if canceller is not None:
            canceller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await canceller
        for sig in installed:
            loop.remove_signal_handler(sig)
        if owned:
            await backend.aclose()
    return listener.stats


def _on_signal(listener: ComfyListener, sig: int) -> None:
    import signal

    logger.info("received %s; sending what was received, then stopping", signal.Signals(sig).name)
    listener.stop()


async def _backend_from(block: str | None) -> ComfyBackend:
    if block:
        from prefect_comfy.backends.registry import load_credentials

        return (await load_credentials(block)).get_backend()
    from prefect_comfy.backends.environment import backend_from_environment

    return backend_from_environment()
