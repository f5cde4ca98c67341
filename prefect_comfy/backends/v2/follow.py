"""What following a v2 server's jobs needs from the backend: pages of the job list and job tags.

Comfy API v2 has no account-wide stream. A listener follows the jobs it can find: it lists them
(``GET /api/v2/jobs?limit=&cursor=``, newest first, where the server can: the emulator and
comfy-api-proxy; Comfy Cloud answers 501) and opens one job's stream per job. This module holds the
two backend-side pieces of that:

- `list_page`: one page of the job list (optionally filtered by metadata labels, filtered
  here too: comfy-api-proxy 0.1.6 ignores ``metadata[...]``);
- `list_page` with ``status=`UNFINISHED```: the unfinished jobs only, what the waiting layer's
  shared poll lists once a round instead of reading each polled job;
- `walk_pages`: the one walk over those pages, used by every caller (a submit that looks up a
  refused key, ``unfinished_jobs``, the listener's rounds): a cursor seen twice ends it with a
  `ComfyProtocolError`, and it reads at most `MAX_PAGES` pages;
- `TagMemory`: the tags of jobs this process saw (submitted, read or listed), so that a
  ``job.progress`` event from a job's stream carries the job's tags like every other backend's
  (a v2 ``progress`` frame has no metadata). One job read fills the gap for a job never seen.

Example:
    >>> memory = TagMemory(size=2)
    >>> memory.remember("k", "job_1", ["a"]); memory.get("k", "job_1")
    ['a']
    >>> memory.get("k", "job_2") is None
    True
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prefect_comfy.backends.base import MAX_PAGES, UnfinishedJobs, walk_pages
from prefect_comfy.backends.v2 import mapping
from prefect_comfy.backends.v2.http import V2Http
from prefect_comfy.bounded import Bounded
from prefect_comfy.exceptions import ComfyAPIError, ComfyProtocolError
from prefect_comfy.models import Job

__all__ = [
    "CLASSES",
    "MAX_PAGES",
    "PAGE_SIZE",
    "TAGS",
    "UNFINISHED",
    "TagMemory",
    "list_page",
    "list_unfinished",
    "walk_pages",
]

logger = logging.getLogger(__name__)

PAGE_SIZE = 100
"""Jobs asked for per page (the most v2 allows)."""
UNFINISHED = "queued,running,canceling"
"""The ``status`` filter of a listing of the unfinished jobs."""


class TagMemory:
    """``(connection key, job id) -> tags``, bounded (the oldest forgotten first)."""

    def __init__(self, size: int = 10_000) -> None:
        self._tags: Bounded = Bounded(size)

    def remember(self, connection_key: str, job_id: str, tags: list[str]) -> None:
        self._tags.remember((connection_key, job_id), list(tags))

    def get(self, connection_key: str, job_id: str) -> list[str] | None:
        tags = self._tags.get((connection_key, job_id))
        return None if tags is None else list(tags)


TAGS = TagMemory()
"""The process's memory of v2 job tags (shared by a backend and its clones)."""

CLASSES: Bounded = Bounded(1_000)
"""``(connection key, job id) -> ({node id: class_type}, {node id: upstream node ids})`` of the graphs
this process submitted: the progress of a job is read against its whole graph (`JobProgress`)."""


async def list_page(
    http: V2Http,
    *,
    cursor: str | None = None,
    limit: int = PAGE_SIZE,
    metadata: dict[str, str] | None = None,
    status: str | None = None,
) -> tuple[list[Job], str | None]:
    """One page of ``GET /api/v2/jobs`` (newest first): the jobs carrying every label, and the
    cursor of the next page (``None`` on the last). ``status`` (comma-separated v2 statuses, such
    as `UNFINISHED`) asks the server to list only jobs in those states (comfy-api-proxy and the
    emulator do; a server that refuses it answers 400 or 422).

    Raises:
        ComfyAPIError: 501 where the server cannot list (Comfy Cloud).
    """
    metadata = metadata or {}
    params: dict[str, Any] = {f"metadata[{k}]": v for k, v in metadata.items()}
    params["limit"] = str(max(1, min(PAGE_SIZE, limit)))
    if cursor:
        params["cursor"] = cursor
    if status:
        params["status"] = status
    body = await http.v2("GET", "/jobs", params=params) or {}
    listed = body.get("jobs") if isinstance(body, dict) else None
    next_cursor = body.get("next_cursor") if isinstance(body, dict) else None
    if (
        not isinstance(body, dict)
        or not isinstance(listed, list | None)
        or not isinstance(next_cursor, str | None)
    ):
        raise ComfyProtocolError(
            f"Comfy API v2 answered a job list that is not {{'jobs': [...], 'next_cursor': ...}}: "
            f"{str(body)[:200]!r}"
        )
    jobs = [
        mapping.job_of(raw)
        for raw in listed or []
        if not isinstance(raw, dict) or mapping.matches(raw, metadata)
    ]
    return jobs, next_cursor or None


MAX_LIST_PAGES = 100
"""Pages a listing of the unfinished jobs reads at most without a budget (10,000 jobs)."""
NO_STATUS_FILTER: set[str] = set()
"""Origins that refused the list's ``status`` filter: their pending jobs are read one by one."""


async def list_unfinished(
    read: Callable[[str | None], Awaitable[tuple[list[Job], str | None]]],
    *,
    origin: str,
    max_requests: int | None = None,
) -> UnfinishedJobs | None:
    """The unfinished jobs, read page by page with ``read`` (a page of the list filtered by
    ``status=`UNFINISHED```), at most ``max_requests`` pages (then ``complete=False``).

    ``None`` where the server cannot list (501) or refuses the ``status`` filter (400 or 422;
    remembered per origin): then the waiting layer reads its jobs one by one. A full page without
    a cursor (comfy-api-proxy 0.1.6 lists at most 100 and hands out no cursor) is not complete: a
    pending job missing from it may still run.
    """
    if origin in NO_STATUS_FILTER:
        return None
    jobs: list[Job] = []
    state = {"requests": 0, "complete": True, "more": False}
    budget = max_requests if max_requests is not None else MAX_LIST_PAGES

    async def page_of(cursor: str | None, _: int) -> tuple[list[Job], str | None]:
        state["requests"] += 1
        page, next_cursor = await read(cursor)
        if next_cursor is None and len(page) >= PAGE_SIZE:
            state["complete"] = False  # a full page and no way to the next one
        state["more"] = next_cursor is not None
        return page, next_cursor

    try:
        async for page in walk_pages(page_of, what=f"unfinished jobs on {origin}"):
            jobs.extend(job for job in page if not job.is_terminal)
            if state["more"] and state["requests"] >= budget:
                state["complete"] = False  # the budget ran out before the last page
                break
    except ComfyAPIError as exc:
        if exc.status_code == 501:
            return None
        if exc.status_code not in (400, 422):
            raise
        logger.info(
            "Comfy API v2 at %s does not filter its job list by status (%s): pending jobs are "
            "read one by one",
            origin,
            exc,
        )
        NO_STATUS_FILTER.add(origin)
        return None
    return UnfinishedJobs(jobs, complete=bool(state["complete"]), requests=int(state["requests"]))
