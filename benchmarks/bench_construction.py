"""What it costs to build a ``ComfyClient`` / ``CloudBackend``, and to make a first request with it.

Prefect tasks build a backend per call, so construction must be cheap. Building one does no I/O and
loads no certificates (the httpx client is made on the first request, with the process's one SSL
context); the first request pays for the httpx client itself, not for a new SSL context.

    .venv/bin/python benchmarks/bench_construction.py [--n 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import tracemalloc
from collections.abc import Callable

import httpx

from prefect_comfy.backends.cloud.backend import CloudBackend
from prefect_comfy.backends.cloud.rest import ComfyClient
from prefect_comfy.settings import ComfySettings

KEY = "comfyui-bench-key-not-real"
ORIGIN = "https://cloud.comfy.test"


def per_call_ms(make: Callable[[], object], n: int) -> float:
    make()  # warm up imports and caches
    start = time.perf_counter()
    for _ in range(n):
        make()
    return (time.perf_counter() - start) / n * 1e3


def bytes_each(make: Callable[[], object], n: int) -> float:
    """Memory kept alive per object, by ``tracemalloc`` over ``n`` objects held at once."""
    make()
    tracemalloc.start()
    kept = [make() for _ in range(n)]
    size = tracemalloc.get_traced_memory()[0] / n
    tracemalloc.stop()
    del kept
    return size


def with_http(settings: ComfySettings) -> object:
    """A backend and the httpx client (with a real transport) its first request would make."""
    return CloudBackend(settings=settings).client._http


async def first_request_ms(settings: ComfySettings, n: int) -> float:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"id": "j", "status": "x"}))

    async def one() -> None:
        async with CloudBackend(settings=settings, transport=transport) as backend:
            await backend.get_job("j")

    await one()
    start = time.perf_counter()
    for _ in range(n):
        await one()
    return (time.perf_counter() - start) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    n = parser.parse_args().n
    settings = ComfySettings(api_key=KEY, base_url=ORIGIN)
    # The baseline, measured in this run: what every construction cost before the httpx client was
    # made lazily with one shared SSL context (an httpx.AsyncClient loading its own certificates).
    baseline = per_call_ms(lambda: httpx.AsyncClient(base_url=ORIGIN), max(50, n // 20))
    rows = [
        ("ComfyClient(settings=…)", per_call_ms(lambda: ComfyClient(settings=settings), n)),
        ("CloudBackend(settings=…)", per_call_ms(lambda: CloudBackend(settings=settings), n)),
        (
            "CloudBackend(key, url), settings from env",
            per_call_ms(lambda: CloudBackend(KEY, ORIGIN), n),
        ),
        ("ComfySettings() alone", per_call_ms(ComfySettings, n)),
        ("CloudBackend + its real httpx client", per_call_ms(lambda: with_http(settings), n)),
        (
            "CloudBackend + first get_job (MockTransport)",
            asyncio.run(first_request_ms(settings, n)),
        ),
    ]
    print(f"{'baseline: httpx.AsyncClient() with its own SSL':48s} {baseline:8.3f} ms   ratio 1.00")
    for label, ms in rows:
        print(f"{label:48s} {ms:8.3f} ms   ratio {ms / baseline:.4f}")
    start = time.perf_counter()
    for _ in range(1000):
        CloudBackend(settings=settings)
    print(f"{'1,000 CloudBackends':48s} {time.perf_counter() - start:8.3f} s")
    # Memory held per object (waits keep a backend alive): against an httpx.AsyncClient, same run.
    client_bytes = bytes_each(lambda: httpx.AsyncClient(base_url=ORIGIN), 20)
    backend_bytes = bytes_each(lambda: CloudBackend(settings=settings), 1000)
    print(f"{'memory: httpx.AsyncClient() (baseline)':48s} {client_bytes:8.0f} B    ratio 1.00")
    print(
        f"{'memory: CloudBackend(settings=…)':48s} {backend_bytes:8.0f} B    "
        f"ratio {backend_bytes / client_bytes:.4f}"
    )


if __name__ == "__main__":
    main()
