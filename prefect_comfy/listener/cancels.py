"""Cancel the Comfy job of a suspended flow run that is cancelled, or whose suspension timed out.

A suspended flow run has no process: cancelling it (UI, ``prefect flow-run cancel``, the API)
takes it straight from **Suspended** to **Cancelled** (Prefect's "Suspended flow run has no
infrastructure to terminate"), so no ``on_cancellation`` hook and no ``finally`` block runs, and
nothing in the flow can cancel its Comfy job. When the suspension's timeout passes, Prefect's
server fails the run ("The flow was paused and never resumed."), again with no process of ours.
An automation cannot cancel the job either: its actions change Prefect objects or run a
deployment, they cannot call Comfy.

The listener runs for the whole suspension anyway (it brings the job's outcome event that resumes
the run), so it does it: `SuspendedRunCanceller` follows Prefect's
``prefect.flow-run.Cancelled`` and ``prefect.flow-run.Failed`` events of runs whose previous state
was ``Suspended`` (or, for a cancellation, ``Resuming``: resumed, not started yet, no process
either) and reads the run's labels:

- **cancelled**: every job the labels name — ``comfy.suspended-job``, the ``comfy.resume.<key>``
  labels a suspending wait writes, and ``comfy.job-id`` — that has not ended is cancelled;
- **failed** (the suspension's timeout): the ``comfy.suspended-job`` is cancelled unless the wait
  said ``cancel_on_timeout=False`` (the label ``comfy.cancel-on-timeout`` = ``"false"``), as the
  ordinary wait does when its timeout passes.

It cancels on the listener's own Comfy backend.

- On start it first reads such events of the last ``catch_up`` (default one hour) through the
  events API: a run cancelled, or timed out, while the listener was down is handled when it comes
  back.
- Cancelling is idempotent: two listeners, or an event seen twice, cancel a job once (a job that
  ended is left alone; one the server does not know is logged at INFO).
- Any error is logged and the canceller carries on (the stream is opened again after a pause); it
  never stops the listener.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect_comfy.bounded import Bounded
from prefect_comfy.exceptions import NotFound
from prefect_comfy.orchestration.runs import COMFY_JOB_ID_LABEL
from prefect_comfy.orchestration.suspend import (
    CANCEL_ON_TIMEOUT_LABEL,
    RESUME_LABEL_PREFIX,
    SUSPENDED_JOB_LABEL,
)
from prefect_comfy.transport.backoff import Backoff

logger = logging.getLogger(__name__)

__all__ = [
    "CANCELLED_EVENT",
    "DEFAULT_CATCH_UP",
    "FAILED_EVENT",
    "SUSPENDED_STATE_NAMES",
    "SuspendedRunCanceller",
    "job_ids_of_labels",
    "suspended_run_ended",
]

CANCELLED_EVENT = "prefect.flow-run.Cancelled"
FAILED_EVENT = "prefect.flow-run.Failed"
SUSPENDED_STATE_NAMES = frozenset({"Suspended", "Resuming"})
"""States with no process: a run cancelled from one of them cancels its Comfy jobs here."""
DEFAULT_CATCH_UP = timedelta(hours=1)
RETRY_INITIAL = 1.0
"""The first pause before opening a broken flow-run event stream again (seconds; doubling,
jittered, to `RETRY_MAX`; back to this once the stream delivers)."""
RETRY_MAX = 30.0
_SEEN = 1000
_PAGES = 20


def suspended_run_ended(event: Any) -> tuple[str, str] | None:
    """``(flow run id, "cancelled" | "failed")`` for an event that ended a suspended run, else None."""
    kinds = {CANCELLED_EVENT: "cancelled", FAILED_EVENT: "failed"}
    kind = kinds.get(event.event)
    resource_id = str(event.resource.id)
    if kind is None or not resource_id.startswith("prefect.flow-run."):
        return None
    initial = (event.payload or {}).get("initial_state") or {}
    left = SUSPENDED_STATE_NAMES if kind == "cancelled" else {"Suspended"}
    if initial.get("name") not in left:
        return None
    return resource_id.removeprefix("prefect.flow-run."), kind


def job_ids_of_labels(labels: dict[str, Any] | None, kind: str = "cancelled") -> list[str]:
    """The Comfy jobs to cancel for a suspended run that was ``cancelled`` or ``failed``.

    Cancelled: every job the labels name (``comfy.suspended-job``, ``comfy.resume.*``,
    ``comfy.job-id``). Failed (the suspension timed out): the ``comfy.suspended-job``, unless
    ``comfy.cancel-on-timeout`` is ``"false"``.
    """
    labels = labels or {}
    if kind == "failed":
        job = labels.get(SUSPENDED_JOB_LABEL)
        keep = str(labels.get(CANCEL_ON_TIMEOUT_LABEL, "true")).lower() == "false"
        return [str(job)] if job and not keep else []
    found = {
        str(value)
        for key, value in labels.items()
        if value
        and (
            key.startswith(RESUME_LABEL_PREFIX) or key in (COMFY_JOB_ID_LABEL, SUSPENDED_JOB_LABEL)
        )
    }
    return sorted(found)


class SuspendedRunCanceller:
    """Follow flow-run cancellations and failures; cancel the Comfy jobs of suspended runs.

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
        self._seen = Bounded(_SEEN)
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

        event_filter = EventFilter(event=EventNameFilter(name=[CANCELLED_EVENT, FAILED_EVENT]))
        if since is not None:
            event_filter.occurred = EventOccurredFilter(since=since)
        return event_filter

    async def handle(self, event: Any) -> list[str]:
        """Cancel the Comfy jobs of the suspended run ``event`` ended (see the module); their ids."""
        ended = suspended_run_ended(event)
        if ended is None or self._seen.seen(ended):
            return []
        flow_run_id, kind = ended
        async with self._client() as client:
            flow_run = await client.read_flow_run(flow_run_id)
        job_ids = job_ids_of_labels(flow_run.labels, kind)
        if not job_ids:
            logger.info("Suspended flow run %s %s; no Comfy job to cancel", flow_run_id, kind)
        done = []
        for job_id in job_ids:
            if await self._cancel(job_id, flow_run_id, kind):
                done.append(job_id)
        self.cancelled.extend(done)
        return done

    async def _cancel(self, job_id: str, flow_run_id: str, kind: str) -> bool:
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
        why = "was cancelled" if kind == "cancelled" else "failed (its suspension timed out)"
        logger.info(
            "Suspended flow run %s %s: asked Comfy to cancel its job %s (now %s)",
            flow_run_id,
            why,
            job_id,
            job.status,
        )
        return True

    async def catch_up(self) -> int:
        """Handle the runs ended in the last ``catch_up``; how many jobs it cancelled."""
        since = datetime.now(UTC) - self.catch_up_window
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
            logger.warning("Could not handle the flow-run event %s: %r", event.id, exc)

    async def run(self) -> None:
        """Catch up, then follow the events until cancelled; errors are logged, never raised."""
        try:
            await self.catch_up()
        except Exception as exc:
            logger.warning("Could not read the recent flow-run cancellations and failures: %r", exc)
        backoff = Backoff(initial=RETRY_INITIAL, maximum=RETRY_MAX)
        while True:
            try:
                async with self._subscriber(self._filter()) as subscriber:
                    async for event in subscriber:
                        backoff.reset()  # it delivers: a later break starts from the first pause
                        await self._handle_quietly(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await backoff.pause(
                    lambda delay, exc=exc: logger.warning(
                        "The flow-run event stream broke: %r; opening it again in %.1fs", exc, delay
                    )
                )
            else:
                await backoff.pause()  # it ended without an error: open it again, backed off too
