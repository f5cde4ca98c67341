"""The ``comfy.listener.heartbeat`` event: what a listener says of itself, connected or not.

Its resource ``comfy.listener.<listener id>`` carries the labels ``comfy.connected`` and
``comfy.behind`` and ``comfy.durable`` (``false`` while its cursor cannot be saved), so that a
proactive automation can alert when a listener goes quiet, falls behind or runs without durability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime

from prefect.events import Event, Resource

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.listener.stats import ListenerStats
from prefect_comfy.orchestration.events import names as comfy_events

__all__ = ["heartbeat_event"]


def heartbeat_event(
    listener_id: str,
    backend: ComfyBackend,
    *,
    patterns: Sequence[str],
    connected: bool,
    uptime: float,
    in_flight: int,
    stats: ListenerStats,
) -> Event:
    """The heartbeat of listener ``listener_id`` on ``backend``, as of now.

    Args:
        listener_id: names the resource ``comfy.listener.<listener_id>``.
        backend: the server listened to (its kind and address go in the event).
        patterns: the event patterns subscribed to.
        connected: whether the Comfy stream is up.
        uptime: seconds since the listener started.
        in_flight: jobs and uploads tracked as unfinished.
        stats: the listener's counters (copied into the payload).

    Returns:
        The Prefect event, not yet sent.
    """
    return Event(
        event=comfy_events.LISTENER_HEARTBEAT,
        occurred=datetime.now(UTC),
        resource=Resource(
            {
                "prefect.resource.id": f"{comfy_events.PREFIX}.listener.{listener_id}",
                "prefect.resource.name": f"Comfy listener {listener_id}",
                "comfy.backend": backend.kind,
                "comfy.connected": "true" if connected else "false",
                "comfy.behind": "true" if stats.behind else "false",
                "comfy.durable": "true" if stats.cursor_durable else "false",
            }
        ),
        payload={
            "address": backend.address,
            "patterns": list(patterns),
            "connected": connected,
            "uptime_seconds": round(uptime, 1),
            "in_flight": in_flight,
            **asdict(stats),
        },
    )
