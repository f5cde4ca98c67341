"""The listener's counters: what it has done so far, and whether it is behind.

They are the payload of every ``comfy.listener.heartbeat`` and the summary printed at a stop.

Example:
    >>> stats = ListenerStats()
    >>> stats.received += 1
    >>> stats.behind
    False
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ListenerStats"]


@dataclass
class ListenerStats:
    """What a listener has done so far (also the payload of its heartbeats)."""

    received: int = 0
    """Events read from the Comfy stream."""
    reconciled: int = 0
    """Terminal events synthesised from REST after a (re)connect or a restart (catch-up included)."""
    caught_up: int = 0
    """Of those, terminal events of resources listed by time after a restart (never seen in flight)."""
    already_stored: int = 0
    """Recovered terminal events not sent because Prefect already stored them (sent by another
    listener, or by this one before a restart): a trigger fires once."""
    forwarded: int = 0
    """Prefect events sent (heartbeats excluded)."""
    heartbeats: int = 0
    connects: int = 0
    """Connects and reconnects of the Comfy stream (as reported by ``on_connect``)."""
    disconnects: int = 0
    """Drops of an established connection (as reported by ``on_disconnect``, where supported)."""
    stream_restarts: int = 0
    """Times the stream gave up (reconnect budget spent) and the listener opened a new one."""
    send_errors: int = 0
    """Failed attempts to send to Prefect (each retried)."""
    coalesced: int = 0
    """Progress events replaced by a newer one of the same job, or by its outcome, before sending."""
    queued: int = 0
    """Events waiting to be sent to Prefect now (outcomes and pending progress)."""
    oldest_pending_seconds: float = 0.0
    """How long the oldest of them has waited (at the last heartbeat or stop)."""
    behind: bool = False
    """Whether that exceeds ``BEHIND_AFTER`` (5 s): Prefect takes events slower than Comfy sends."""
    cursor_saves: int = 0
    """Times the durable cursor was written."""
    cursor_durable: bool = True
    """Whether the last save of the cursor succeeded (``False``: a restart would lose what is in
    flight; ``cursor_error`` says why)."""
    cursor_error: str | None = None
    """Why the cursor cannot be saved now, or ``None``."""
