"""The small interface every kind of Comfy server implements.

The Prefect layer (blocks, tasks, the sensor, the listener) talks to Comfy only through this class,
so a new kind of server is one new file. Two implementations ship:

- :class:`prefect_comfy.backends.cloud.backend.CloudBackend`: the Comfy Cloud developer API (and the emulator);
- :class:`prefect_comfy.backends.comfyui.backend.ComfyUIBackend`: a self-hosted ComfyUI, or Comfy Cloud's
  ComfyUI-compatible API.

Waiting is not part of what a backend implements, and this module does not import the waiting
layer (it sits above the backends): :mod:`prefect_comfy.waiting` builds waits on :meth:`events`,
the ``get_*`` reads and :meth:`unfinished_jobs`, with one stream per :attr:`connection_key` and
process.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar

from prefect_comfy.models import ComfyEvent, Input, Job, Model, Output
from prefect_comfy.workflows.catalog import NodeCatalog


@dataclass(frozen=True)
class UnfinishedJobs:
    """What :meth:`ComfyBackend.list_unfinished` found.

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


ProgressCallback = Callable[[ComfyEvent], Any | Awaitable[Any]]
"""Called with each ``job.progress`` event; may be sync or async."""

ConnectCallback = Callable[[], Awaitable[None]]
"""Awaited after every (re)connect, once the subscription is active and before events flow on."""

DisconnectCallback = Callable[[], Awaitable[None]]
"""Awaited when an established connection is lost, before reconnecting."""

Source = str | PathLike[str] | bytes
"""What an upload takes: a path to a file, or the bytes themselves (then ``name`` is required)."""


@dataclass(frozen=True)
class Capabilities:
    """What a kind of server can do beyond the required methods; the Prefect layer reads these.

    Attributes:
        upload_models: :meth:`ComfyBackend.upload_model` uploads (else it raises with what to do).
        global_event_stream: :meth:`ComfyBackend.events` carries the events of every job of the
            credentials, including jobs other clients submitted (else only this client's).
        find_jobs_by_tag: :meth:`ComfyBackend.unfinished_jobs` works (what cancellation uses to
            find a job whose id never reached the flow).
    """

    upload_models: bool = False
    global_event_stream: bool = False
    find_jobs_by_tag: bool = False
    per_job_streams: bool = False
    """:meth:`ComfyBackend.job_events` streams one job's events (servers without a global stream)."""
    node_catalog: bool = False
    """The server itself serves its node catalog (ComfyUI's ``GET /object_info``); a kind without
    one reads :meth:`ComfyBackend.object_info` from the block's ``catalog_source``, if set."""


class ComfyBackend(abc.ABC):
    """One Comfy server, reached with one set of credentials.

    A backend is an async context manager; :meth:`aclose` releases its connections. Instances are
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
            api_key: the key, or ``None`` for the first of :attr:`key_variables` that is set.
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

        The API key is never sent to an origin other than :attr:`address`.
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
    @abc.abstractmethod
    def events(
        self,
        patterns: Sequence[str] = ("*",),
        *,
        on_connect: ConnectCallback | None = None,
        on_disconnect: DisconnectCallback | None = None,
    ) -> AsyncIterator[ComfyEvent]:
        """Events matching the patterns, across reconnects, duplicates dropped.

        ``on_connect`` is awaited after every connect and reconnect, once subscribed, so that the
        caller can reconcile what it missed while disconnected (the stream has no replay).

        ``on_disconnect`` is awaited (or run as a task) when an established connection is lost
        (one that ``on_connect`` was called for), before reconnecting, so that the caller can tell
        "reconnecting" from "connected"; not when the caller closes the stream. Exceptions in either
        hook are logged, never raised into the stream. Every backend takes both.

        Raises:
            WebSocketAuthError: the key was refused.
            WebSocketConnectionError: the reconnect budget is spent.
        """

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
        reached the flow (only where :attr:`capabilities` says ``find_jobs_by_tag``). Without, every
        unfinished job: what the waiting layer uses to reconcile after a reconnect with a few list
        calls instead of a read per job (``None``: it reads pending jobs one by one).
        """
        return None

    async def list_unfinished(self, *, max_requests: int | None = None) -> UnfinishedJobs | None:
        """Every unfinished job, for the waiting layer's reconciliation, unless listing them would
        take more than ``max_requests`` REST requests: then stop early (``complete=False``) and
        return what was read, so that the caller reads its few jobs one by one instead.

        The default lists with :meth:`unfinished_jobs` whatever it costs; a backend that can learn
        the size of the backlog from its first page overrides it. ``None``: it cannot list.
        """
        jobs = await self.unfinished_jobs()
        return None if jobs is None else UnfinishedJobs(jobs)

    # -- the node catalog ----------------------------------------------------------------------
    async def object_info(self) -> dict[str, Any]:
        """The node catalog, in the shape of ComfyUI's ``GET /object_info`` (never cached here:
        :func:`prefect_comfy.backends.catalog.node_catalog` caches it per server and process).

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

    # -- life ---------------------------------------------------------------------------------
    async def aclose(self) -> None:  # noqa: B027 - a backend with nothing to close keeps this
        """Release connections. Safe to call twice."""

    async def __aenter__(self) -> ComfyBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(address={self.address!r})"
