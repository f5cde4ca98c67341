"""The small interface every kind of Comfy server implements.

The Prefect layer (blocks, tasks, the sensor), the waiting layer, the listener and the CLI talk to
Comfy only through this class, so a new kind of server is one new package. Three kinds ship:

- `prefect_comfy.backends.cloud.backend.CloudBackend`: the Comfy Cloud developer API (and the emulator);
- `prefect_comfy.backends.comfyui.backend.ComfyUIBackend`: a self-hosted ComfyUI, or Comfy Cloud's
  ComfyUI-compatible API;
- `prefect_comfy.backends.v2.backend.V2Backend`: Comfy API v2 (Comfy Cloud, serverless
  deployments, comfy-api-proxy), which has no account-wide stream, only one per job.

Waiting is not part of what a backend implements, and this module does not import the waiting
layer (it sits above the backends): `prefect_comfy.waiting` builds waits on `events`,
the ``get_*`` reads and `unfinished_jobs`, with one stream per `connection_key` and
process.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar, Literal
from uuid import uuid4

from prefect_comfy.exceptions import ComfyProtocolError, NotFound
from prefect_comfy.models import ComfyEvent, Input, Job, Model, Output
from prefect_comfy.workflows.catalog import NodeCatalog


@dataclass(frozen=True)
class UnfinishedJobs:
    """What `ComfyBackend.list_unfinished` found.

    Attributes:
        jobs: the unfinished jobs listed.
        complete: every unfinished job is in ``jobs`` (else the listing stopped early, because it
            would have taken more requests than allowed: ``jobs`` holds what was read so far).
        requests: the REST requests it took (0 where the backend does not know).
        backlog: how many unfinished jobs the server has, where it said (else ``None``).
    """

    jobs: list[Job]
    complete: bool = True
    requests: int = 0
    backlog: int | None = None


logger = logging.getLogger(__name__)

ProgressCallback = Callable[[ComfyEvent], Any | Awaitable[Any]]
"""Called with each ``job.progress`` event (and ``job.preview``, a live preview image, when made
with `with_previews`); may be sync or async."""

ConnectCallback = Callable[[], Awaitable[None]]
"""Awaited after every (re)connect, once the subscription is active and before events flow on."""

DisconnectCallback = Callable[[], Awaitable[None]]
"""Awaited when an established connection is lost, before reconnecting."""

Source = str | PathLike[str] | bytes
"""What an upload takes: a path to a file, or the bytes themselves (then ``name`` is required)."""


def matches(pattern: str, name: str) -> bool:
    """Whether an event name matches a subscription pattern of `ComfyBackend.events`.

    ``*`` matches everything, ``job.*`` every name that starts with ``job.``, anything else one name.

    Example:
        >>> matches("job.*", "job.completed"), matches("job.*", "jobs.x"), matches("*", "x")
        (True, False, True)
    """
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return name.startswith(pattern[:-1])
    return pattern == name


def matches_any(patterns: Iterable[str], name: str) -> bool:
    """Whether any of the patterns matches the name."""
    return any(matches(p, name) for p in patterns)


def validate_pattern(pattern: str) -> str:
    """Return the pattern if it is well formed (``*``, ``prefix.*`` or a plain name), else raise."""
    if not isinstance(pattern, str) or not pattern or pattern.strip() != pattern:
        raise ValueError(f"invalid event pattern {pattern!r}")
    if "*" in pattern and not (
        pattern == "*" or (pattern.endswith(".*") and "*" not in pattern[:-2])
    ):
        raise ValueError(
            f"invalid event pattern {pattern!r}: use '*', 'prefix.*' or an exact event name"
        )
    return pattern


MAX_PAGES = 100
"""Pages one walk over the job list reads at most (10,000 jobs): a server that keeps handing out
fresh cursors cannot keep a caller reading (and remembering) for ever."""

ReadPage = Callable[[Any, int], Awaitable[tuple[Sequence[Any], Any]]]
"""Reads one page: ``(cursor, page number from 0) -> (jobs, next cursor)``."""


async def walk_pages(
    read: ReadPage, *, what: str, max_pages: int = MAX_PAGES
) -> AsyncIterator[Sequence[Any]]:
    """Each page's jobs, newest first, until the last page (a caller may stop early).

    Args:
        read: reads one page (the cursor, the page's number from 0).
        what: what is walked, for the error and the warning (``"jobs on http://..."``).
        max_pages: the most pages read; past that the walk ends with a warning.

    Raises:
        ComfyProtocolError: the server handed out a cursor it had handed out before (a walk that
            would never end).

    Example:
        >>> import asyncio
        >>> async def read(cursor, n):
        ...     return [], "same"
        >>> async def walk():
        ...     return [page async for page in walk_pages(read, what="jobs")]
        >>> asyncio.run(walk())
        Traceback (most recent call last):
        ...
        prefect_comfy.exceptions.ComfyProtocolError: The server's list of jobs repeats the cursor 'same' (page 2): the listing would never end, so it was stopped. Report this to the server's operator
    """
    seen: set[Any] = set()
    cursor: Any = None
    for number in range(max_pages):
        jobs, cursor = await read(cursor, number)
        yield jobs
        if not cursor:
            return
        if cursor in seen:
            raise ComfyProtocolError(
                f"The server's list of {what} repeats the cursor {str(cursor)[:64]!r} "
                f"(page {number + 1}): the listing would never end, so it was stopped. "
                "Report this to the server's operator"
            )
        seen.add(cursor)
    logger.warning(
        "Stopped listing %s after %d pages (the most one walk reads)",
        what,
        max_pages,
    )


@dataclass(frozen=True)
class Recent:
    """A resource the server lists as created (or ended) recently: what catching up reads.

    Attributes:
        kind: ``job``, ``input`` or ``model``.
        resource: the resource as the server describes it now.
        ended: when it ended, where the server says (``None``: in flight, or not said).
    """

    kind: Literal["job", "input", "model"]
    resource: Job | Input | Model
    ended: datetime | None = None


PageReader = Callable[[Any], Awaitable[tuple[Sequence[Any], Any]]]
"""Reads one page of a newest-first listing: ``token -> (items, next token or None)``."""


async def recent_from_pages(
    kind: Literal["job", "input", "model"],
    read_page: PageReader,
    since: datetime,
    *,
    limit: int,
) -> list[Recent]:
    """Walk a newest-first listing (`walk_pages`) until a page holds nothing created since
    ``since``, or ``limit`` resources were found: what catching up reads, for every kind.

    Raises:
        ComfyProtocolError: the server handed back a page token it had already given.
    """
    found: list[Recent] = []

    async def read(token: Any, _number: int) -> tuple[Sequence[Any], Any]:
        return await read_page(token)

    async for items in walk_pages(read, what=f"{kind}s"):
        recent = [r for r in items if (_aware(getattr(r, "created_at", None)) or since) >= since]
        found.extend(
            Recent(kind, r, _aware(getattr(r, "completed_at", None)))
            for r in recent[: limit - len(found)]
        )
        if not recent or len(found) >= limit:
            break
    return found


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True)
class Capabilities:
    """What a kind of server can do beyond the required methods; the Prefect layer reads these.

    Attributes:
        upload_models: `ComfyBackend.upload_model` uploads (else it raises with what to do).
        global_event_stream: `ComfyBackend.events` carries the events of every job of the
            credentials, including jobs other clients submitted (else only this client's).
        find_jobs_by_tag: `ComfyBackend.unfinished_jobs` works (what cancellation uses to
            find a job whose id never reached the flow).
    """

    upload_models: bool = False
    global_event_stream: bool = False
    find_jobs_by_tag: bool = False
    per_job_streams: bool = False
    """`ComfyBackend.job_events` streams one job's events (servers without a global stream)."""
    node_catalog: bool = False
    """The server itself serves its node catalog (ComfyUI's ``GET /object_info``); a kind without
    one reads `ComfyBackend.object_info` from the block's ``catalog_source``, if set."""
    list_jobs: bool = False
    """`ComfyBackend.list_jobs_page` lists every job of the credentials, newest first (a
    server may still answer 501 at run time: Comfy Cloud's v2 surface does)."""


class ComfyBackend(abc.ABC):
    """One Comfy server, reached with one set of credentials.

    A backend is an async context manager; `aclose` releases its connections. Instances are
    cheap: make one per task if you like, waits share a connection anyway.
    """

    kind: ClassVar[str]
    """The ``comfy.backend`` label of Prefect events: ``cloud`` or ``comfyui``."""

    capabilities: ClassVar[Capabilities] = Capabilities()
    """What this kind of server can do beyond the required methods (all off by default)."""

    url_probe: ClassVar[tuple[str, frozenset[int]] | None] = None
    """A path whose ``GET`` (no key sent) answers one of these statuses on this kind of server
    only: how ``prefect-comfy --url URL`` finds the kind of a server it is given."""

    key_variables: ClassVar[tuple[str, ...]] = ()
    """The environment variables a key is read from, first set wins, when none is given."""

    @classmethod
    def at_url(cls, url: str, api_key: str | None = None) -> ComfyBackend:
        """A backend for the server at ``url`` (its origin) with ``api_key``.

        Args:
            url: the server's origin, such as ``http://127.0.0.1:8188``.
            api_key: the key, or ``None`` for the first of `key_variables` that is set.
        """
        return cls(url, api_key)  # type: ignore[call-arg]

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """The server's origin with no credentials in it, such as ``https://cloud.comfy.org``.

        Part of every deterministic Prefect event id, so the sensor and the listener agree.
        """

    @property
    @abc.abstractmethod
    def connection_key(self) -> str:
        """Identifies the credentials (address plus a hash of the key, never the key itself).

        Waits with equal keys in one event loop share one stream.
        """

    @abc.abstractmethod
    def clone(self) -> ComfyBackend:
        """A new, independent backend with the same configuration (the shared hub owns one)."""

    # -- jobs ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def submit(
        self,
        workflow: dict[str, Any],
        *,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit an API-format workflow graph; the same ``idempotency_key`` returns the same job.

        Raises:
            InvalidWorkflow: the graph was refused, with one entry per bad node.
        """

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> Job:
        """Read a job's current state (never cached)."""

    async def check_access(self) -> None:
        """One cheap authenticated read, to find a wrong key or URL before it is relied on.

        It asks for a job nobody has: a server that takes the key answers "not found".

        Raises:
            AuthenticationError: the server refused the key.
            ComfyTransportError: nothing answered at the address.
            ComfyAPIError: any other error answer.
        """
        try:
            await self.get_job(str(uuid4()))
        except NotFound:
            return

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> Job:
        """Ask to cancel a job. A pending job ends at once; a running one at its next checkpoint.

        Cancelling a job that already ended is not an error: the job is returned as it is.
        """

    @abc.abstractmethod
    async def outputs(self, job_id: str) -> list[Output]:
        """The outputs of a completed job."""

    @abc.abstractmethod
    async def download(self, output: Output, dest: str | PathLike[str]) -> Path:
        """Stream an output to ``dest`` (a folder, or a file path); returns the file's path.

        The API key is never sent to an origin other than `address`.
        """

    # -- uploads ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def upload_input(
        self,
        source: Source,
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Input:
        """Upload a file for workflows to use by ``name``; returns it, perhaps not yet ready."""

    @abc.abstractmethod
    async def upload_model(
        self,
        source: Source,
        *,
        type: str,
        name: str | None = None,
        tags: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Model:
        """Upload a model file of a type (checkpoint, lora …); returns it, perhaps not yet ready."""

    @abc.abstractmethod
    async def get_input(self, input_id: str) -> Input:
        """Read an input's current state."""

    @abc.abstractmethod
    async def get_model(self, model_id: str) -> Model:
        """Read a model's current state."""

    # -- the event stream ---------------------------------------------------------------------
    def events(
        self,
        patterns: Sequence[str] = ("*",),
        *,
        on_connect: ConnectCallback | None = None,
        on_disconnect: DisconnectCallback | None = None,
        forever: bool = False,
    ) -> AsyncIterator[ComfyEvent]:
        """Events matching the patterns, across reconnects, duplicates dropped.

        ``on_connect`` is awaited after every connect and reconnect, once subscribed, so that the
        caller can reconcile what it missed while disconnected (the stream has no replay).

        ``on_disconnect`` is awaited (or run as a task) when an established connection is lost
        (one that ``on_connect`` was called for), before reconnecting, so that the caller can tell
        "reconnecting" from "connected"; not when the caller closes the stream. Exceptions in either
        hook are logged, never raised into the stream. The stream is the one loop that reconnects,
        within ``max_reconnect_attempts``; ``forever`` lifts that budget for a caller that never
        gives up (the listener wraps no loop of its own around it). Every backend takes all three.

        Only where ``capabilities.global_event_stream`` or the server has a stream of this client's
        events; a kind with neither (Comfy API v2) leaves it out, and the waiting layer and the
        listener follow its jobs with `job_events` instead.

        Raises:
            WebSocketAuthError: the key was refused.
            WebSocketConnectionError: the reconnect budget is spent (never with ``forever``).
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no event stream: follow each job with job_events()"
        )

    def job_events(self, job_id: str) -> AsyncIterator[ComfyEvent]:
        """One job's events (``job.progress`` snapshots, then its terminal ``job.*`` event), ending
        after the terminal one or when the server closes the stream (then the caller reads the job).
        Only where ``capabilities.per_job_streams``.

        Raises:
            TooManyStreams: the server caps open streams (429 ``too_many_streams``); ``retry_after``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no per-job event stream")

    async def unfinished_jobs(self, tag: str | None = None) -> list[Job] | None:
        """The jobs of these credentials that have not ended (pending or running), or ``None`` when
        this kind of server cannot list them.

        With ``tag``, only the jobs carrying it: what cancellation uses to find a job whose id never
        reached the flow (only where `capabilities` says ``find_jobs_by_tag``). Without, every
        unfinished job: what the waiting layer uses to reconcile after a reconnect with a few list
        calls instead of a read per job (``None``: it reads pending jobs one by one).
        """
        return None

    async def list_unfinished(self, *, max_requests: int | None = None) -> UnfinishedJobs | None:
        """Every unfinished job, for the waiting layer's reconciliation, unless listing them would
        take more than ``max_requests`` REST requests: then stop early (``complete=False``) and
        return what was read, so that the caller reads its few jobs one by one instead.

        The default lists with `unfinished_jobs` whatever it costs; a backend that can learn
        the size of the backlog from its first page overrides it. ``None``: it cannot list.
        """
        jobs = await self.unfinished_jobs()
        return None if jobs is None else UnfinishedJobs(jobs)

    # -- the node catalog ----------------------------------------------------------------------
    async def object_info(self) -> dict[str, Any]:
        """The node catalog, in the shape of ComfyUI's ``GET /object_info`` (never cached here:
        `prefect_comfy.backends.catalog.node_catalog` caches it per server and process).

        A kind whose server serves it (``capabilities.node_catalog``) asks the server; the others
        read the ``catalog_source`` they were given (a ComfyUI URL or a saved JSON file), which
        this default does.

        Raises:
            CatalogUnavailable: no catalog source is set, or it cannot be read.
        """
        from prefect_comfy.backends.catalog import read_catalog_source

        return await read_catalog_source(self.catalog_source, kind=self.kind, server=self.address)

    async def node_catalog(self, *, refresh: bool = False) -> tuple[NodeCatalog, bool]:
        """The server's node catalog, cached once per server (``connection_key``) and process,
        and whether it was read just now; ``refresh`` reads it again (a stale catalog).

        Raises:
            CatalogUnavailable: no catalog to be had; the message says what to set.
        """
        from prefect_comfy.backends.catalog import node_catalog

        return await node_catalog(self, refresh=refresh)

    catalog_source: str | None = None
    """Where a kind without a catalog route reads its node catalog: a ComfyUI URL (its
    ``/api/object_info``) or the path of a saved ``object_info`` JSON file; ``None``: nowhere."""

    async def list_jobs_page(
        self, cursor: str | None = None, **filters: Any
    ) -> tuple[list[Job], str | None]:
        """One page of every job of the credentials, newest first, and the next page's cursor
        (``None`` after the last). Only where ``capabilities.list_jobs``.

        Raises:
            ComfyAPIError: 501 where this server does not list.
        """
        raise NotImplementedError(f"{type(self).__name__} does not list jobs page by page")

    async def recent(
        self, since: datetime, *, limit: int, kinds: Sequence[str] = ("job", "input", "model")
    ) -> list[Recent] | None:
        """The resources of ``kinds`` created (or ended) since ``since``, newest first, at most
        ``limit`` of each kind; ``None`` when this server cannot list what it did recently.

        What the listener reads to catch up after it was down (a terminal resource is forwarded
        unless it ended before ``since``, one in flight is tracked), and what ``prefect-comfy jobs
        list`` shows.
        """
        return None

    # -- life ---------------------------------------------------------------------------------
    async def aclose(self) -> None:  # noqa: B027 - a backend with nothing to close keeps this
        """Release connections. Safe to call twice."""

    async def __aenter__(self) -> ComfyBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(address={self.address!r})"
