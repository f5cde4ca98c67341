"""Where the emitter's Prefect events go by default: Prefect's events worker, each event id once.

`prefect_event_sink` queues an event with its own id and related resources; a process that
emits outside a Prefect run and exits soon after should ``await drain_events()`` first.
`prefect_comfy.orchestration.events.emitter` re-exports both.
"""

from __future__ import annotations

from typing import Any

from prefect.events import Event

from prefect_comfy.bounded import Bounded

__all__ = ["drain_events", "prefect_event_sink"]

_SENT_IDS = Bounded(8192)


def _first_time(event_id: Any) -> bool:
    """Whether this process has not yet queued an event with this id.

    Prefect's events worker keys its per-event context by id: the same id queued twice makes the
    second one fail in the worker (and the server stores it once anyway), so repeats stop here.
    """
    return not _SENT_IDS.seen(event_id)


def prefect_event_sink(event: Event) -> None:
    """Queue an event on Prefect's events worker with its own id and related resources.

    Inside a run, the worker adds the flow, deployment and tags of the run; resources already
    related (the flow run and task run given explicitly) are not repeated. Never raises, except
    `prefect.exceptions.EventTooLarge`.
    """
    from prefect.events import emit_event

    if not _first_time(event.id):
        return
    emit_event(
        event=event.event,
        resource=dict(event.resource.root),
        occurred=event.occurred,
        related=list(event.related),
        payload=event.payload,
        id=event.id,
    )


async def drain_events(timeout: float | None = 10.0) -> None:
    """Wait until every queued Prefect event has been sent (stops the worker; the next emit starts one).

    For short-lived processes that emit outside a Prefect run; inside one, Prefect drains at exit.
    """
    from prefect.events.worker import EventsWorker

    await EventsWorker.drain_all(timeout=timeout)
