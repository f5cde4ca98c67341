"""Run the emulator on a real socket, in a thread of its own with its own event loop.

Example:
    >>> from prefect_comfy_emulator import EmulatorConfig, EmulatorServer
    >>> with EmulatorServer(EmulatorConfig(api_keys=["comfyui-test-key-not-real"])) as emu:
    ...     emu.api_url.endswith("/developer/api/v1")
    True
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import uvicorn

from prefect_comfy.redaction import RedactingFilter
from prefect_comfy.transport.threads import start_thread
from prefect_comfy_emulator.app import create_app
from prefect_comfy_emulator.bus import Connection
from prefect_comfy_emulator.config import API_PREFIX, EmulatorConfig
from prefect_comfy_emulator.state import EmulatorState, Fault
from prefect_comfy_emulator.v2.errors import STATUS_OF
from prefect_comfy_emulator.v2.face import InjectedError

T = TypeVar("T")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "websockets.server")
"""Loggers of the in-process server that see requests: the API key is redacted from their records."""


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket whose accepted connections have Nagle's algorithm off.

    asyncio sets ``TCP_NODELAY`` on an accepted socket only when its ``proto`` is
    ``IPPROTO_TCP``, and an accepted socket inherits ``proto`` from the listening one: created
    with ``proto=0``, every REST reply on a reused connection (uvicorn writes headers and body
    separately) waited ~40 ms for the client's delayed ACK. Linux also copies ``TCP_NODELAY``
    from the listening socket to the accepted ones, so it is set here too.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class EmulatorServer:
    """The emulator served by uvicorn in a background thread; a sync and an async context manager.

    The control methods are thread-safe: they run on the server's loop and wait for the result.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.app = create_app(config)
        self.state: EmulatorState = self.app.state.emulator
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port: int | None = None
        self._log_filter = RedactingFilter(config.api_keys)
        self._filtered: list[logging.Logger] = []

    def __repr__(self) -> str:
        where = self.url if self._port else "not started"
        return f"EmulatorServer({where})"

    # ---- life -------------------------------------------------------------------------------
    def start(self) -> EmulatorServer:
        """Bind and serve; return once the socket accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        config = uvicorn.Config(
            self.app,
            host=self.config.host,
            port=self.config.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
            ws_ping_interval=None,
        )
        self._server = uvicorn.Server(config)
        self._redact_server_logs()
        # Two listening sockets: the API, and the storage stand-in on an origin of its own, so
        # that a client following a v2 content redirect there must (and httpx does) drop its key.
        api_socket = _listen(self.config.host, self.config.port)
        try:
            sockets = [api_socket, _listen(self.config.host, 0)]
        except OSError:
            api_socket.close()
            raise
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        self.app.state.storage_origin = f"http://{host}:{sockets[1].getsockname()[1]}"
        ready = threading.Event()
        self._thread = start_thread(self._serve, ready, sockets, name="comfy-emulator")
        if not ready.wait(START_TIMEOUT) or not self._server.started:
            self.stop()
            raise RuntimeError("the emulator did not start")
        sockets = self._server.servers[0].sockets
        self._port = sockets[0].getsockname()[1]
        self.state.bus.abort_transport = self._abort_transport
        return self

    def _serve(self, ready: threading.Event, sockets: list[socket.socket]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        server = self._server
        assert server is not None

        async def main() -> None:
            task = asyncio.create_task(server.serve(sockets=sockets))
            while not server.started and not task.done():
                await asyncio.sleep(0.005)
            ready.set()
            await task

        try:
            loop.run_until_complete(main())
        finally:
            ready.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        """Stop serving and wait for the thread (open WebSockets are closed with 1012)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
        self._thread = None
        self._loop = None
        for logger in self._filtered:
            logger.removeFilter(self._log_filter)
        self._filtered = []

    def _redact_server_logs(self) -> None:
        """Keep the accepted keys out of what uvicorn and the emulator log, at every level.

        A client's key arrives as ``Authorization: Bearer`` (logged by the WebSocket server at
        DEBUG) or as ``?api_key=`` in the path (uvicorn's access log). Done after ``uvicorn.Config``,
        which configures uvicorn's loggers; undone by `stop`.
        """
        names = [*SERVER_LOGGERS, "prefect_comfy_emulator"]
        names += [
            n for n in logging.Logger.manager.loggerDict if n.startswith("prefect_comfy_emulator.")
        ]
        self._filtered = [logging.getLogger(name) for name in dict.fromkeys(names)]
        for logger in self._filtered:
            logger.addFilter(self._log_filter)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EmulatorServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # ---- addresses --------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the emulator is not running")
        return self._port

    @property
    def url(self) -> str:
        """The origin, such as ``http://127.0.0.1:PORT``."""
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

    @property
    def v2_url(self) -> str:
        """The base URL of the v2 face for clients that append ``/api/v2`` themselves (comfy-sdk's
        ``COMFY_BASE_URL``): the origin."""
        return self.url

    @property
    def storage_origin(self) -> str:
        """Where v2 content redirects point: the storage stand-in on a port of its own."""
        return self.app.state.storage_origin

    @property
    def ws_url(self) -> str:
        return "ws" + self.api_url[len("http") :] + "/ws"

    # ---- controls ---------------------------------------------------------------------------
    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's loop (it touches loop-bound state) and return its result."""
        loop = self._loop
        if loop is None or self._thread is None:
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(STOP_TIMEOUT)

    def reset(self) -> None:
        """Forget every job, input, model, output, fault and counter."""
        self._call(self.state.reset)

    def reset_faults(self) -> None:
        """Clear HTTP faults, the event pause (held events are delivered) and duplicate events."""
        self._call(self.state.reset_faults)

    def stats(self) -> dict[str, Any]:
        return self._call(self.state.stats)

    def drop_connections(self) -> int:
        return self._call(self.state.bus.drop_all)

    def pause_events(self) -> None:
        self._call(self.state.bus.pause)

    def resume_events(self) -> int:
        return self._call(self.state.bus.resume)

    def inject_faults(
        self,
        status: int,
        count: int = 1,
        retry_after: float | None = None,
        path: str | None = None,
        when: str = "before",
    ) -> None:
        """The next ``count`` API requests under ``path`` get ``status`` (``when="after"``: processed first)."""
        if status not in (429, 500, 502, 503) or count < 1 or when not in ("before", "after"):
            raise ValueError("status must be 429/500/502/503, count >= 1, when 'before' or 'after'")
        self._call(lambda: self.state.add_fault(Fault(status, count, retry_after, path, when)))

    def close_after_connected(self, count: int) -> None:
        """Close the next ``count`` WebSocket connections right after ``connected`` (before the
        client subscribes): a close during the handshake."""
        if count < 0:
            raise ValueError("count must be >= 0")

        def arm() -> None:
            self.state.bus.close_after_connected = count

        self._call(arm)

    def duplicate_events(self, enabled: bool) -> None:
        def flip() -> None:
            self.state.bus.duplicate = enabled

        self._call(flip)

    def v2_stats(self) -> dict[str, Any]:
        """The v2 face's counters: ``streams_open``, ``streams_peak``, ``streams_refused``, ``assets``."""
        return self._call(self.app.state.v2.stats)

    def inject_v2_error(
        self,
        code: str,
        count: int = 1,
        retry_after: float | None = None,
        path: str = "/jobs",
        method: str = "POST",
    ) -> None:
        """The next ``count`` v2 ``method`` requests under ``path`` (below ``/api/v2``) get the
        contract's error ``code`` (``insufficient_credits``, ``queue_full``, …) with its status."""
        if code not in STATUS_OF or count < 1:
            raise ValueError(f"code must be one of {', '.join(sorted(STATUS_OF))}; count >= 1")
        item = InjectedError(code, count, retry_after, path, method)
        self._call(lambda: self.app.state.v2.injected.append(item))

    def _abort_transport(self, conn: Connection) -> bool:
        """Close a WebSocket's TCP stream without a close frame (runs on the server's loop)."""
        server = self._server
        if server is None or conn.client is None:
            return False
        for protocol in list(server.server_state.connections):
            scope = getattr(protocol, "scope", None)
            transport = getattr(protocol, "transport", None)
            if (
                isinstance(scope, dict)
                and scope.get("type") == "websocket"
                and transport is not None
            ):
                client = scope.get("client")
                if client is not None and tuple(client) == conn.client:
                    transport.abort()
                    return True
        return False
