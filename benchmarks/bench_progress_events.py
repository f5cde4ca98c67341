"""What coalescing saves: synthetic progress for many jobs through the emitter vs. one event per update.

No server: a counting sink stands in for Prefect, and a simulated clock drives time, so the numbers
are exact and the run takes a second or two. Both sides build real Prefect events (deterministic ids),
so the CPU column compares like with like.

    .venv/bin/python benchmarks/bench_progress_events.py --jobs 1000 --updates 100 --duration 60
"""

from __future__ import annotations

import argparse
import time

from prefect_comfy.emitter import ComfyEventEmitter, ProgressBudget
from prefect_comfy.models import ComfyEvent


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def updates(jobs: int, per_job: int, duration: float):
    """(time, job index, progress) for every update, jobs interleaved evenly over ``duration``."""
    step = duration / per_job
    for i in range(per_job):
        for j in range(jobs):
            yield i * step + j * step / jobs, j, round(100 * (i + 1) / per_job, 2)


def run(jobs: int, per_job: int, duration: float, interval: float, rate: float, coalesce: bool):
    clock = SimClock()
    sent: list[str] = []
    budget = ProgressBudget(rate if coalesce else 1e12, clock=clock)
    emitters = [
        ComfyEventEmitter(
            "http://bench",
            "cloud",
            progress_interval=interval if coalesce else 0.0,
            budget=budget,
            sink=lambda e: sent.append(e.event),
            clock=clock,
        )
        for _ in range(jobs)
    ]
    started = time.perf_counter()
    next_tick = 0.0
    for at, j, value in updates(jobs, per_job, duration):
        clock.now = at
        if at >= next_tick:  # the sensors' pumps, every 50 ms of simulated time
            for em in emitters:
                em.flush_due()
            next_tick = at + 0.05
        event = ComfyEvent(
            event="job.progress",
            payload={"id": f"job{j}", "status": "running", "progress": value, "node_id": "3"},
        )
        emitters[j].progress(event)
    for j, em in enumerate(emitters):
        em.outcome(
            ComfyEvent(event="job.completed", payload={"id": f"job{j}", "status": "completed"})
        )
    cpu = time.perf_counter() - started
    progress = sum(1 for name in sent if name == "comfy.job.progress")
    return progress, len(sent) - progress, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=100, help="progress updates per job")
    parser.add_argument("--duration", type=float, default=60.0, help="simulated seconds per job")
    parser.add_argument("--interval", type=float, default=1.0, help="progress_interval, seconds")
    parser.add_argument("--rate", type=float, default=50.0, help="process budget, events/s")
    args = parser.parse_args()

    total = args.jobs * args.updates
    print(
        f"{args.jobs} jobs x {args.updates} updates over {args.duration:g} s simulated "
        f"({total / args.duration:,.0f} updates/s); interval {args.interval:g} s, budget {args.rate:g}/s"
    )
    base_p, base_o, base_cpu = run(
        args.jobs, args.updates, args.duration, args.interval, args.rate, False
    )
    co_p, co_o, co_cpu = run(args.jobs, args.updates, args.duration, args.interval, args.rate, True)
    print(f"{'':>12} {'progress':>10} {'outcomes':>9} {'events/s':>9} {'cpu s':>7}")
    for label, p, o, cpu in (
        ("every update", base_p, base_o, base_cpu),
        ("coalesced", co_p, co_o, co_cpu),
    ):
        print(f"{label:>12} {p:>10,} {o:>9,} {(p + o) / args.duration:>9,.1f} {cpu:>7.2f}")
    print(
        f"progress events: {co_p:,} instead of {base_p:,} (ratio {base_p / max(co_p, 1):,.1f}x fewer)"
    )
    print(
        f"every job's final value sent: {co_p >= args.jobs}; outcomes kept: {co_o == base_o == args.jobs}"
    )


if __name__ == "__main__":
    main()
