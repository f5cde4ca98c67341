"""How long ``prefect-comfy --version`` and ``--help`` take to answer, against Python itself.

Each command runs in a fresh interpreter ``--n`` times, interleaved with the two baselines measured
in the same run: ``python -c pass`` (the floor) and ``python -c "import prefect"`` (what the
commands paid when they imported Prefect). The median CPU time (user + system) of each is printed,
with its ratios to the floor and to the Prefect import, and the median wall time: on a shared,
loaded machine the CPU time is the steadier figure. ``import prefect_comfy`` is measured too.

    .venv/bin/python benchmarks/bench_startup.py [--n 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

PY = sys.executable
CASES: dict[str, list[str]] = {
    "python -c pass": [PY, "-c", "pass"],
    "python -c 'import prefect'": [PY, "-c", "import prefect"],
    "python -c 'import prefect_comfy'": [PY, "-c", "import prefect_comfy"],
    "prefect-comfy --version": [PY, "-m", "prefect_comfy.cli", "--version"],
    "prefect-comfy --help": [PY, "-m", "prefect_comfy.cli", "--help"],
    "prefect-comfy run --help": [PY, "-m", "prefect_comfy.cli", "run", "--help"],
}


def once(command: list[str]) -> tuple[float, float]:
    """The command's CPU seconds (user + system, its children's included) and wall seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=7, help="runs of each command (default 7)")
    n = parser.parse_args().n
    for command in CASES.values():  # warm the file cache (and the bytecode) first
        once(command)
    cpu: dict[str, list[float]] = {name: [] for name in CASES}
    wall: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(n):  # interleaved, so that a change in the machine's load hits every case
        for name, command in CASES.items():
            used, took = once(command)
            cpu[name].append(used)
            wall[name].append(took)
    median = {name: statistics.median(found) for name, found in cpu.items()}
    floor, prefect = median["python -c pass"], median["python -c 'import prefect'"]
    print(f"load average {os.getloadavg()[0]:.1f}, {n} runs each")
    print(f"{'command':34} {'CPU s':>7} {'x python':>9} {'x import prefect':>17} {'wall s':>7}")
    for name, seconds in median.items():
        print(
            f"{name:34} {seconds:7.3f} {seconds / floor:9.1f} {seconds / prefect:17.2f}"
            f" {statistics.median(wall[name]):7.3f}"
        )


if __name__ == "__main__":
    main()
