"""Cancel the Comfy job of a suspended flow run that is cancelled.

A suspended flow run has no process: cancelling it (UI, ``prefect flow-run cancel``, the API)
takes it straight from **Suspended** to **Cancelled** (Prefect's "Suspended flow run has no
infrastructure to terminate"), so no ``on_cancellation`` hook and no ``finally`` block runs, and
nothing in the flow can cancel its Comfy job. An automation cannot do it either: its actions change
Prefect objects or run a deployment, they cannot call Comfy.

The listener runs for the whole suspension anyway (it brings the job's outcome event that resumes
the run), so it does it: :class:`SuspendedRunCanceller` follows Prefect's
``prefect.flow-run.Cancelled`` events, and for a run whose previous state was ``Suspended`` (or
``Resuming``: resumed, not started yet, no process either) it reads the run's labels — the
``comfy.resume.<key>`` labels a suspending wait writes, and ``comfy.job-id`` — and cancels each of
those jobs that has not ended, on the listener's own Comfy backend.

- On start it first reads the cancellations of the last ``catch_up`` (default one hour) through the
  events API: a run cancelled while the listener was down is handled when it comes back.
- Cancelling is idempotent: two listeners, or a cancellation seen twice, cancel a job once (a job
  that ended is left alone; one the server does not know is logged at INFO).
- Any error is logged and the canceller carries on (the stream is opened again after a pause); it
  never stops the listener.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect_comfy.exceptions import NotFound
from prefect_comfy.runs import COMFY_JOB_ID_LABEL
from prefect_comfy.suspend import RESUME_LABEL_PREFIX

logger = logging.getLogger(__name__)

__all__ = [
    "CANCELLED_EVENT",
    "DEFAULT_CATCH_UP",
    "SUSPENDED_STATE_NAMES",
    "SuspendedRunCanceller",
    "job_ids_of_labels",
    "suspended_run_cancelled",
]

CANCELLED_EVENT = "prefect.flow-run.Cancelled"
SUSPENDED_STATE_NAMES = frozenset({"Suspended", "Resuming"})
"""States with no process: a run cancelled from one of them cancels its Comfy jobs here."""
DEFAULT_CATCH_UP = timedelta(hours=1)
RETRY_SECONDS = 5.0
_SEEN = 1000
_PAGES = 20


def suspended_run_cancelled(event: Any) -> str | None:
    """The flow run id of a ``prefect.flow-run.Cancelled`` event that left a suspended state."""
    if event.event != CANCELLED_EVENT:
        return None
    resource_id = str(event.resource.id)
    if not resource_id.startswith("prefect.flow-run."):
        return None
    initial = (event.payload or {}).get("initial_state") or {}
    if initial.get("name") not in SUSPENDED_STATE_NAMES:
        return None
    return resource_id.removeprefix("prefect.flow-run.")


def job_ids_of_labels(labels: dict[str, Any] | None) -> list[str]:
    """The Comfy job ids a flow run's labels name (``comfy.resume.*`` and ``comfy.job-id``)."""
    found = {
        str(value)
        for key, value in (labels or {}).items()
        if value and (key.startswith(RESUME_LABEL_PREFIX) or key == COMFY_JOB_ID_LABEL)
    }
    return sorted(found)


class SuspendedRunCanceller:
    """Follow flow-run cancellations; cancel the Comfy jobs of the runs that were suspended.

    Args:
        backend: the listener's Comfy backend (``get_job`` and ``cancel``).
        catch_up: how far back to look for cancellations when it starts.
        client_factory: makes a Prefect client (default ``get_client``).
        subscriber_factory: makes a Prefect event subscriber for an ``EventFilter`` (default
            ``get_events_subscriber``).
    """

    def __init__(
        self,
        backend: Any,
        *,
        catch_up: timedelta = DEFAULT_CATCH_UP,
        client_factory: Callable[[], Any] | None = None,
        subscriber_factory: Callable[[Any], Any] | None = None,
    ) -> None:
        self.backend = backend
        self.catch_up_window = catch_up
        self._client_factory = client_factory
        self._subscriber_factory = subscriber_factory
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.cancelled: list[str] = []
        """Ids of the Comfy jobs this canceller cancelled (for tests and stats)."""

    def _client(self) -> Any:
        if self._client_factory is not None:
            return self._client_factory()
        from prefect.client.orchestration import get_client

        return get_client()

    def _subscriber(self, event_filter: Any) -> Any:
        if self._subscriber_factory is not None:
            return self._subscriber_factory(event_filter)
        from prefect.events.clients import get_events_subscriber

        return get_events_subscriber(filter=event_filter, reconnect_on_clean_close=True)

    @staticmethod
    def _filter(since: datetime | None = None) -> Any:
        from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

        event_filter = EventFilter(event=EventNameFilter(name=[CANCELLED_EVENT]))
        if since is not None:
            event_filter.occurred = EventOccurredFilter(since=since)
        return event_filter

    async def handle(self, event: Any) -> list[str]:
        """Cancel the unfinished Comfy jobs of the suspended run ``event`` cancelled; their ids."""
        flow_run_id = suspended_run_cancelled(event)
        if flow_run_id is None or flow_run_id in self._seen:
            return []
        self._seen[flow_run_id] = None
        while len(self._seen) > _SEEN:
            self._seen.popitem(last=False)
        async with self._client() as client:
            flow_run = await client.read_flow_run(flow_run_id)
        job_ids = job_ids_of_labels(flow_run.labels)
        if not job_ids:
            logger.info("Suspended flow run %s was cancelled; it names no Comfy job", flow_run_id)
        done = []
        for job_id in job_ids:
            if await self._cancel(job_id, flow_run_id):
                done.append(job_id)
        self.cancelled.extend(done)
        return done

    async def _cancel(self, job_id: str, flow_run_id: str) -> bool:
        try:
            job = await self.backend.get_job(job_id)
            if job.is_terminal:
                return False
            job = await self.backend.cancel(job_id)
        except NotFound:
            logger.info("Comfy job %s of flow run %s is not on this server", job_id, flow_run_id)
            return False
        except Exception as exc:
            logger.warning(
                "Could not cancel Comfy job %s of flow run %s: %r", job_id, flow_run_id, exc
            )
            return False
        logger.info(
            "Suspended flow run %s was cancelled: asked Comfy to cancel its job %s (now %s)",
            flow_run_id,
            job_id,
            job.status,
        )
        return True

    async def catch_up(self) -> int:
        """Handle the cancellations of the last ``catch_up``; how many jobs it cancelled."""
        since = datetime.now(timezone.utc) - self.catch_up_window
        before = len(self.cancelled)
        async with self._client() as client:
            page = await client.read_events(filter=self._filter(since), limit=50)
            for _ in range(_PAGES):
                for event in page.events:
                    await self._handle_quietly(event)
                if not page.next_page:
                    break
                page = await client.read_events_page(page.next_page)
        return len(self.cancelled) - before

    async def _handle_quietly(self, event: Any) -> None:
        try:
            await self.handle(event)
        except Exception as exc:
            logger.warning("Could not handle the cancellation event %s: %r", event.id, exc)

    async def run(self) -> None:
        """Catch up, then follow cancellations until cancelled; errors are logged, never raised."""
        try:
            await self.catch_up()
        except Exception as exc:
            logger.warning("Could not read the recent flow-run cancellations: %r", exc)
        while True:
            try:
                async with self._subscriber(self._filter()) as subscriber:
                    async for event in subscriber:
                        await self._handle_quietly(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("The flow-run cancellation stream broke: %r; opening it again", exc)
            await asyncio.sleep(RETRY_SECONDS)  # a pause before reconnecting, not synchronisation
