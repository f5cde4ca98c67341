"""Lifetimes of a worker's flow processes, read from ``/proc`` (Linux): for bench_suspend.py.

A thread polls the worker's children every ``interval`` seconds. A process starts when it was
forked (``/proc/<pid>/stat`` start time, 10 ms resolution) and ends at the first poll that no
longer finds it alive (so a lifetime is over-counted by at most ``interval``). Each process is
attributed to its flow run by the ``PREFECT__FLOW_RUN_ID`` in its environment.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass


@dataclass
class Lifetime:
    pid: int
    flow_run_id: str | None
    start: float  # epoch seconds
    end: float | None = None

    @property
    def seconds(self) -> float:
        return (self.end or time.time()) - self.start


def _boot_time() -> float:
    with open("/proc/uptime") as f:
        return time.time() - float(f.read().split()[0])


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(c) for c in f.read().split())
    except OSError:
        pass
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start(pid: int, boot: float, tick: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return boot + int(f.read().rsplit(")", 1)[1].split()[19]) / tick
    except OSError:
        return None


def _flow_run_id(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"PREFECT__FLOW_RUN_ID="):
            return item.split(b"=", 1)[1].decode()
    return None


class ProcessWatch:
    """Records every child process of ``parent`` while the context is open."""

    def __init__(self, parent: int, interval: float = 0.05) -> None:
        self.parent, self.interval = parent, interval
        self.seen: dict[tuple[int, float], Lifetime] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._boot, self._tick = _boot_time(), os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now = time.time()
            for pid in _children(self.parent):
                start = _start(pid, self._boot, self._tick)
                if start is None:
                    continue
                life = self.seen.setdefault((pid, start), Lifetime(pid, None, start))
                if life.flow_run_id is None:  # not exec'd yet: try again at the next poll
                    life.flow_run_id = _flow_run_id(pid)
            for life in self.seen.values():
                if life.end is None and not _alive(life.pid):
                    life.end = now

    def of_run(self, flow_run_id: object) -> list[Lifetime]:
        return sorted(
            (x for x in self.seen.values() if x.flow_run_id == str(flow_run_id)),
            key=lambda x: x.start,
        )
