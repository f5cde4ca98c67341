"""What coalescing saves: synthetic progress for many jobs through the emitter vs. one event per update.

No server: a counting sink stands in for Prefect, and a simulated clock drives time, so the numbers
are exact and the run takes a second or two. Both sides build real Prefect events (deterministic ids),
so the CPU column compares like with like.

    .venv/bin/python benchmarks/bench_progress_events.py --jobs 1000 --updates 100 --duration 60

Then a batch that ends at once (issue 11, item 17): ``--batch`` jobs updating every 0.1 s for 10 s,
all completing in the same instant, through the budget as it is now (a sliding one-second window;
the outcome takes over the held progress) and, as the baseline in the same run, as it was (a token
bucket of one second's worth, every job's held value forced out before its outcome). It prints the
busiest one-second window of progress events against the budget.
"""

from __future__ import annotations

import argparse
import time

from prefect_comfy.models import ComfyEvent
from prefect_comfy.orchestration.events.emitter import ComfyEventEmitter, ProgressBudget


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


BATCH_SECONDS = 10.0
"""Simulated length of the batch: updates for 10 s, then every job completes."""


class FormerBucket:
    """The budget as it was: a token bucket of one second's worth that a final value could overdraw."""

    def __init__(self, rate: float, clock: SimClock) -> None:
        self.rate, self.capacity, self._clock = rate, max(1.0, rate), clock
        self._tokens, self._stamp = self.capacity, clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_acquire(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def force_acquire(self) -> None:
        self._refill()
        self._tokens = max(self._tokens - 1.0, -self.capacity)

    def seconds_until_available(self) -> float:
        self._refill()
        return 0.0 if self._tokens >= 1 else (1.0 - self._tokens) / self.rate


class FormerEmitter(ComfyEventEmitter):
    """The emitter as it was: the held progress forced out (over the budget) before the outcome."""

    def outcome(self, comfy_event, **kwargs):  # type: ignore[override]
        state = self._jobs.get(comfy_event.resource_id or "")
        if state is not None and state.pending is not None:
            self.budget.force_acquire()  # type: ignore[attr-defined]
            self._send_pending(state, self._clock())
        return super().outcome(comfy_event, **kwargs)


def batch_end(jobs: int, rate: float, former: bool) -> tuple[int, float, int]:
    """(progress events, their average per second, the most in any one-second window)."""
    clock = SimClock()
    stamps: list[float] = []

    def sink(event) -> None:
        if event.event == "comfy.job.progress":
            stamps.append(clock.now)

    budget = FormerBucket(rate, clock) if former else ProgressBudget(rate, clock=clock)
    cls = FormerEmitter if former else ComfyEventEmitter
    emitters = [
        cls("http://bench", "cloud", budget=budget, sink=sink, clock=clock)  # type: ignore[arg-type]
        for _ in range(jobs)
    ]
    for tick in range(int(BATCH_SECONDS * 10)):  # updates every 0.1 s; the pumps flush each tick
        clock.now = tick * 0.1
        for j, em in enumerate(emitters):
            event = ComfyEvent(
                event="job.progress",
                payload={"id": f"job{j}", "status": "running", "progress": tick + 1},
            )
            em.progress(event)
            em.flush_due()
    clock.now = 10.0
    for j, em in enumerate(emitters):  # every job ends in the same instant
        em.outcome(ComfyEvent(event="job.completed", payload={"id": f"job{j}"}))
    busiest = 0
    first = 0
    for i, at in enumerate(stamps):  # sorted: the widest one-second window ending at each send
        while stamps[first] <= at - 1.0:
            first += 1
        busiest = max(busiest, i - first + 1)
    return len(stamps), len(stamps) / BATCH_SECONDS, busiest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=100, help="progress updates per job")
    parser.add_argument("--duration", type=float, default=60.0, help="simulated seconds per job")
    parser.add_argument("--interval", type=float, default=1.0, help="progress_interval, seconds")
    parser.add_argument("--rate", type=float, default=50.0, help="process budget, events/s")
    parser.add_argument("--batch", type=int, default=200, help="jobs that end at once")
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
    print(f"outcomes kept: {co_o == base_o == args.jobs} (each says where its job stood)")
    print()
    print(f"a batch of {args.batch} jobs ending at once, budget {args.rate:g}/s:")
    print(f"{'':>28} {'progress':>9} {'avg/s':>7} {'busiest 1 s':>12}")
    results = {}
    for label, former in (
        ("token bucket + forced finals", True),
        ("sliding window, no finals", False),
    ):
        results[former] = batch_end(args.batch, args.rate, former)
        count, average, busiest = results[former]
        print(f"{label:>28} {count:>9,} {average:>7.1f} {busiest:>12,}")
    print(
        f"busiest second: {results[False][2]} (budget {args.rate:g}) instead of {results[True][2]} "
        f"(ratio {results[True][2] / max(results[False][2], 1):.1f}x)"
    )


if __name__ == "__main__":
    main()
