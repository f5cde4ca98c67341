"""Benchmark: from a ``comfy.job.completed`` event to the triggered flow run Running, by runner setting.

Starts a real ``prefect server start`` (SQLite, 127.0.0.1, a free port: tests/support/prefect_stack.py)
and, for each setting in turn, serves one deployment with an ``on_job_completed`` trigger (a tag of
its own, so that each setting's events start only its runs) in a process of its own:

- ``default``: ``serve(deployment)``, the runner polls every ``PREFECT_RUNNER_POLL_FREQUENCY`` = 10 s;
- ``PREFECT_RUNNER_POLL_FREQUENCY=1``: the same, the runner polling every second (the setting is an
  integer of seconds, and ``flow.serve`` takes no ``query_seconds``: for ``flow.serve`` this is the
  knob);
- ``serve(..., query_seconds=0.5)``: ``prefect.serve`` passes ``query_seconds`` to its ``Runner``
  (a float).

Once the trigger is live (a probe event made a run), it sends ``--events`` events one by one, as the
listener does (``from_comfy_event`` through Prefect's events client), each a random 0-3 s after the
previous run was taken by the runner (so that the runner's poll is at a random phase), and reads
each run: **created** (the trigger made the run), **taken** (its Pending state: the runner's poll found
it, what the settings change) and **Running** (``start_time``: its process started and the engine
began), each from the event's ``occurred``. Prints the median and the worst of each, and
the load average before and after.

Run::

    .venv/bin/python benchmarks/bench_trigger_latency.py            # 4 events per setting
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.prefect_stack import prefect_stack, stop  # noqa: E402

ADDRESS = "http://trigger-latency.invalid"
SERVED = """
import os

from prefect import flow, serve

from prefect_comfy import on_job_completed


@flow(name=os.environ["BENCH_FLOW"])
def on_done(job_id: str, outputs: list | None = None) -> str:
    return job_id


if __name__ == "__main__":
    deployment = on_done.to_deployment(
        name="d", triggers=[on_job_completed(tags=[os.environ["BENCH_TAG"]])]
    )
    query = os.environ.get("BENCH_QUERY_SECONDS")
    if query:
        serve(deployment, query_seconds=float(query))
    else:
        serve(deployment)
"""
SETTINGS: list[tuple[str, dict[str, str]]] = [
    ("default (poll every 10 s)", {}),
    ("PREFECT_RUNNER_POLL_FREQUENCY=1", {"PREFECT_RUNNER_POLL_FREQUENCY": "1"}),
    ("serve(query_seconds=0.5)", {"BENCH_QUERY_SECONDS": "0.5"}),
]


async def measure(
    name: str, env: dict[str, str], stack: Any, events: int
) -> dict[str, list[float]]:

    from prefect_comfy.models import ComfyEvent

    flow_name = f"bench-{uuid.uuid4().hex[:8]}"
    tag = f"t{uuid.uuid4().hex[:8]}"
    served = stack.spawn(
        flow_name,
        [sys.executable, str(stack.home / "flows" / "served.py")],
        BENCH_FLOW=flow_name,
        BENCH_TAG=tag,
        **env,
    )

    def done(jid: str) -> ComfyEvent:
        payload = {"id": jid, "status": "completed", "tags": [tag], "outputs": []}
        return ComfyEvent(event="job.completed", payload=payload)

    try:
        return await _measure(name, stack, events, flow_name, done)
    finally:
        stop(served)  # by its pid; its runs are done


async def _measure(name: str, stack: Any, events: int, flow_name: str, done: Any) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from tests.support.triggers import send, trigger_is_live

    async with get_client() as client:
        deadline = time.monotonic() + 120
        while True:
            try:
                deployment = await client.read_deployment_by_name(f"{flow_name}/d")
                if await client.read_resource_related_automations(
                    f"prefect.deployment.{deployment.id}"
                ):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the deployment was not served\n{stack.logs()}")
            await asyncio.sleep(0.5)
        await trigger_is_live(deployment.id, done, address=ADDRESS, timeout=120)
        found: dict[str, list[float]] = {"created": [], "pending": [], "running": []}
        of_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        rng = random.Random(7)
        sent: dict[str, float] = {}

        async def run_of(jid: str) -> Any:
            runs = await client.read_flow_runs(deployment_filter=of_deployment)
            return next((r for r in runs if r.parameters.get("job_id") == jid), None)

        async def pending_at(run: Any) -> float | None:
            states = await client.read_flow_run_states(run.id)
            return next(
                (s.timestamp.timestamp() for s in states if s.type.value == "PENDING"), None
            )

        for _ in range(events):  # each once the runner has taken the one before
            await asyncio.sleep(rng.uniform(0, 3))
            jid = f"job-{uuid.uuid4().hex[:12]}"
            (event,) = await send(done(jid), address=ADDRESS)
            sent[jid] = event.occurred.timestamp()
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                run = await run_of(jid)
                if run is not None and await pending_at(run) is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"{name}: the runner never took {jid}\n{stack.logs()}")
        for jid, occurred in sent.items():
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                run = await run_of(jid)
                if run is not None and run.start_time is not None:
                    break
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError(f"{name}: no Running run for {jid}\n{stack.logs()}")
            found["created"].append(run.created.timestamp() - occurred)
            found["pending"].append((await pending_at(run) or 0.0) - occurred)
            found["running"].append(run.start_time.timestamp() - occurred)
        return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=4, help="events per setting")
    args = parser.parse_args()
    load_before = os.getloadavg()
    results: dict[str, dict[str, list[float]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-trigger-") as home,
        prefect_stack(Path(home), start_timeout=600) as stack,
    ):
        (stack.home / "flows" / "served.py").write_text(SERVED, encoding="utf-8")
        os.environ.update(PREFECT_API_URL=stack.api_url, PREFECT_HOME=str(stack.home))
        for name, env in SETTINGS:
            results[name] = asyncio.run(measure(name, env, stack, args.events))
    load_after = os.getloadavg()
    print(
        f"{args.events} comfy.job.completed events per setting, prefect server start (SQLite), "
        f"load average (1, 5, 15 min) before {_load(load_before)}, after {_load(load_after)}"
    )
    print(
        f"{'':34} {'created p50':>12} {'taken p50':>12} {'taken max':>12} "
        f"{'Running p50':>12} {'Running max':>12}"
    )
    for name, found in results.items():
        print(
            f"{name:34} {statistics.median(found['created']):11.2f}s "
            f"{statistics.median(found['pending']):11.2f}s {max(found['pending']):11.2f}s "
            f"{statistics.median(found['running']):11.2f}s {max(found['running']):11.2f}s"
        )


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    main()
