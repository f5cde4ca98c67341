"""Worker process-seconds held per Comfy job: the ordinary wait against the suspending one.

One run starts a real Prefect stack (``prefect server start`` on SQLite, a process work pool and
``prefect worker start``, ``prefect-comfy listen``, the resume automation) and the emulator, deploys
``run_comfy_workflow`` twice (``suspend=False``, the baseline, and ``suspend=True``) and runs one job
of ``--seconds`` (60 by default) through each, at the same time.

Process-seconds are read from each flow run's state history: a flow process lives from the
worker's ``Pending`` (just before it starts the process) to the ``Suspended`` or final state that
the process sets as it exits. The sum over a run's processes is what a pod- or task-billed work
pool pays for. The script prints both sums, the wall time of each run and the ratio
suspending/ordinary (the goal: under 10 %).

    .venv/bin/python benchmarks/bench_suspend.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the Prefect stack helper is shared with the integration tests

from prefect.client.orchestration import PrefectClient  # noqa: E402

from prefect_comfy.emulator import EmulatorConfig, EmulatorServer  # noqa: E402
from tests.support.prefect_stack import Stack, prefect_stack  # noqa: E402
from tests.workflows import slow_workflow  # noqa: E402

KEY = "comfyui-bench-key-not-real"
POOL = "bench-pool"
DEPLOY = """
import sys
from prefect_comfy import ComfyCloudCredentials
from prefect_comfy.flows import run_comfy_workflow
from prefect import flow

key, url, root, pool = sys.argv[1:5]
ComfyCloudCredentials(api_key=key, base_url=url).save("bench", overwrite=True)
creds = ComfyCloudCredentials.load("bench")
for name, suspend in (("ordinary", False), ("suspending", True)):
    flow.from_source(root, "prefect_comfy/flows.py:run_comfy_workflow").deploy(
        name=name, work_pool_name=pool, print_next_steps=False,
        parameters={"credentials": creds, "suspend": suspend, "timeout": 3600},
    )
"""


def workflow(seconds: float) -> dict[str, Any]:
    return slow_workflow(steps=int(seconds / 0.05))


async def held_seconds(client: PrefectClient, run_id: uuid.UUID) -> tuple[float, int, float]:
    """(process-seconds, processes, wall seconds) of a finished flow run."""
    states = sorted(await client.read_flow_run_states(run_id), key=lambda s: s.timestamp)
    held, processes, started = 0.0, 0, None
    for state in states:
        if state.name == "Pending":
            started = state.timestamp
        elif started is not None and (state.name == "Suspended" or state.is_final()):
            held += (state.timestamp - started).total_seconds()
            processes += 1
            started = None
    return held, processes, (states[-1].timestamp - states[0].timestamp).total_seconds()


async def measure(stack: Stack, seconds: float) -> dict[str, tuple[float, int, float]]:
    async with PrefectClient(stack.api_url) as client:
        runs = {}
        for name in ("ordinary", "suspending"):
            dep = await client.read_deployment_by_name(f"run-comfy-workflow/{name}")
            run = await client.create_flow_run_from_deployment(
                dep.id, parameters={"workflow": workflow(seconds)}
            )
            runs[name] = run.id
        deadline = time.monotonic() + seconds * 3 + 180
        while True:
            done = [(await client.read_flow_run(r)).state for r in runs.values()]
            if all(s is not None and s.is_final() for s in done):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"runs did not finish: {done}")
            await asyncio.sleep(1)  # polling a condition with a deadline
        for state in done:
            if not state.is_completed():  # type: ignore[union-attr]
                raise SystemExit(f"a run did not complete: {state}\n{stack.logs()}")
        return {name: await held_seconds(client, run_id) for name, run_id in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the Comfy job")
    args = parser.parse_args()
    config = EmulatorConfig(api_keys=[KEY], step_duration=0.01)
    with (
        EmulatorServer(config) as emulator,
        tempfile.TemporaryDirectory() as home,
        prefect_stack(Path(home)) as stack,
    ):
        stack.run([sys.executable, "-m", "prefect", "work-pool", "create", POOL, "-t", "process"])
        stack.run([sys.executable, "-c", DEPLOY, KEY, emulator.url, str(ROOT), POOL])
        stack.run([sys.executable, "-m", "prefect_comfy.cli", "automations", "create-resume"])
        stack.spawn("worker", [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL])
        stack.listener(emulator.url, KEY, "bench")
        results = asyncio.run(measure(stack, args.seconds))
    ordinary, suspending = results["ordinary"], results["suspending"]
    print(f"job of {args.seconds:.0f} s, process work pool, one run each, started together")
    for name, (held, processes, wall) in results.items():
        print(
            f"  {name:<11} {held:7.1f} process-s held in {processes} process(es), {wall:6.1f} s wall"
        )
    ratio = suspending[0] / ordinary[0]
    print(f"  suspending/ordinary = {ratio:.1%} of the process-seconds (goal < 10%)")


if __name__ == "__main__":
    main()
