"""Real ComfyUI under chaos: a loopback TCP proxy cuts the WebSocket at random points.

20 small jobs (EmptyImage → SaveImage, every fourth with a blur, so that the queue runs for a few
seconds) go through a proxy in front of ComfyUI 0.3.75 that passes HTTP untouched and aborts every
WebSocket connection at random moments, 0.2–1 s apart, until the last wait ended. Every wait must
end ``job.completed`` (the stream reconnects; what it missed is reconciled from ``/queue`` and
``/history``), and once the stream is closed no asyncio task (test loop and waiting loop) or file
descriptor is left over.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import pytest

from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
from prefect_comfy.settings import ComfySettings
from prefect_comfy.waiting.hub import EventHub
from prefect_comfy.waiting.loop import waiting_loop
from prefect_comfy.waiting.waits import wait_for
from tests.support.comfyui_graphs import empty_to_save, long_graph
from tests.support.comfyui_server import RunningComfyUI
from tests.support.waiting import eventually

pytestmark = pytest.mark.comfyui

JOBS = 20
SEED = 20261202


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def tasks_on(loop: asyncio.AbstractEventLoop) -> set[asyncio.Task[Any]]:
    async def read() -> set[asyncio.Task[Any]]:
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(read(), loop))


class CuttingProxy:
    """A loopback TCP proxy to ``upstream``; :meth:`cut_websockets` aborts every WebSocket."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.server: asyncio.Server | None = None
        self.websockets: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.cuts = 0
        self.ws_opened = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        pair = (writer, up_writer)
        try:
            first = await reader.read(65536)
            if first.startswith(b"GET /ws"):
                self.ws_opened += 1
                self.websockets.add(pair)
            up_writer.write(first)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self.websockets.discard(pair)
            for w in pair:
                w.close()
            self.tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def cut_websockets(self) -> int:
        cut = 0
        for client, upstream in list(self.websockets):
            client.transport.abort()
            upstream.transport.abort()
            cut += 1
        self.cuts += cut
        return cut

    async def aclose(self) -> None:
        assert self.server is not None
        self.server.close()
        for client, upstream in list(self.websockets):
            client.transport.abort()
            upstream.transport.abort()
        await self.server.wait_closed()
        await eventually(lambda: not self.tasks, timeout=10, message="proxy connections closed")


async def test_waits_on_comfyui_end_right_while_the_websocket_is_cut(
    comfyui_server: RunningComfyUI,
) -> None:
    waiting_loop()  # the waiting layer's thread lives for the process: not a leak
    fds_before = open_fds()
    tasks_before = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    waiting_before = await tasks_on(waiting_loop())
    proxy = CuttingProxy(comfyui_server.host, comfyui_server.port)
    url = await proxy.start()
    settings = ComfySettings(
        reconnect_delay=0.05, max_reconnect_delay=0.5, max_reconnect_attempts=1000
    )
    rnd = random.Random(SEED)
    done = asyncio.Event()

    async def chaos() -> None:
        while not done.is_set():
            await asyncio.sleep(rnd.uniform(0.2, 1.0))  # the storm's pace, not a synchronisation
            proxy.cut_websockets()

    started = time.monotonic()
    async with ComfyUIBackend(url, settings=settings) as backend:
        graphs = [
            long_graph(384, 1)
            if n % 4 == 0
            else empty_to_save(32 + n, color=n * 4099, prefix="chaos")
            for n in range(JOBS)
        ]
        driver = asyncio.create_task(chaos())
        try:
            jobs = [await backend.submit(graph) for graph in graphs]

            async def one(job_id: str) -> str:
                try:
                    return (await wait_for(backend, "job", job_id, timeout=120)).event
                except Exception as exc:  # reported below
                    return repr(exc)

            outcomes = await asyncio.gather(*(one(job.id) for job in jobs))
        finally:
            done.set()
            await driver
        elapsed = time.monotonic() - started
        await EventHub.shared(backend).aclose()
    await proxy.aclose()

    assert outcomes == ["job.completed"] * JOBS, outcomes
    assert proxy.cuts >= 2 and proxy.ws_opened >= 3, (proxy.cuts, proxy.ws_opened)

    async def settled() -> bool:
        extra = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} - tasks_before
        extra_waiting = await tasks_on(waiting_loop()) - waiting_before
        return not extra and not extra_waiting and open_fds() <= fds_before

    await eventually(settled, timeout=20, interval=0.1, message="no leaked task or descriptor")
    print(
        f"\ncomfyui chaos: {JOBS} jobs in {elapsed:.1f} s; {proxy.cuts} WebSocket cuts, "
        f"{proxy.ws_opened} WebSocket connections; descriptors {fds_before} -> {open_fds()}"
    )
