"""How a job block's step runs: sync or async, as a Prefect task inside a run or as its body outside.

`ComfyWorkflow` and `ComfyJobRun` have each
method twice, ``atrigger`` and ``trigger`` and so on (`dispatch`, Prefect's own ``Block.load``
behaviour with public API only), and run each step as the matching task of
`prefect_comfy.orchestration.tasks` inside a flow or task run (`astep`, `step`), or as that
task's body outside one. In a sync flow a step's task is submitted and waited for in slices
(`result_of`), so that a Prefect timeout of a flow running outside the main thread lands.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from prefect.context import FlowRunContext, TaskRunContext
from prefect.futures import PrefectFuture
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_comfy.models import Job

__all__ = [
    "LATE_RESULT_WAIT",
    "STOPPED_MESSAGE",
    "WAIT_SLICE",
    "astep",
    "dispatch",
    "in_a_run",
    "in_a_sync_flow",
    "late_job",
    "result_of",
    "step",
]

STOPPED_MESSAGE = "The flow run stopped before its Comfy job ended: cancelling it"
"""What a flow run stopped first (a Prefect timeout, a cancellation, an error) logs, as a warning."""

R = TypeVar("R")

WAIT_SLICE = 0.5
"""Seconds of one wait for a step's task in a sync flow (see `result_of`)."""

LATE_RESULT_WAIT = 10.0
"""Seconds a stopped trigger waits for a submit in flight to learn the id of the job to cancel."""


def dispatch(
    async_method: Callable[..., Coroutine[Any, Any, R]],
) -> Callable[[Callable[..., R]], Callable[..., Any]]:
    """The sync/async twin of a method: the coroutine in async code, the result in sync code.

    What Prefect's own ``Block.load`` does, with public API only: ``_sync=True`` forces the
    blocking form, ``_sync=False`` the coroutine.
    """

    def decorator(sync_method: Callable[..., R]) -> Callable[..., Any]:
        @functools.wraps(sync_method)
        def twin(*args: Any, _sync: bool | None = None, **kwargs: Any) -> Any:
            run_sync = _sync if _sync is not None else not _in_async_code()
            return (sync_method if run_sync else async_method)(*args, **kwargs)

        twin.aio = async_method  # type: ignore[attr-defined]
        return twin

    return decorator


def _in_async_code() -> bool:
    """Whether the caller is async: in an async flow or task run, or (outside runs) in a loop."""
    run = FlowRunContext.get() if TaskRunContext.get() is None else TaskRunContext.get()
    if run is not None:
        parent = getattr(run, "task", None) or getattr(run, "flow", None)
        return bool(getattr(parent, "isasync", True))
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def in_a_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def in_a_sync_flow() -> bool:
    """Directly in a sync flow's body (not in a task): steps are submitted to its task runner."""
    flow_ctx = FlowRunContext.get()
    return flow_ctx is not None and TaskRunContext.get() is None and not flow_ctx.flow.isasync


async def astep(task: Any, *args: Any, **kwargs: Any) -> Any:
    """A step: its task inside a run, the task's body outside one."""
    return await (task(*args, **kwargs) if in_a_run() else task.fn(*args, **kwargs))


def step(task: Any, *args: Any, **kwargs: Any) -> Any:
    """A step, blocking: in a sync flow its task is submitted and waited for in slices."""
    if in_a_sync_flow():
        return result_of(task.submit(*args, **kwargs))
    return run_coro_as_sync(astep(task, *args, **kwargs))


def result_of(future: PrefectFuture[Any]) -> Any:
    """A task's result, waiting in short slices: a Prefect timeout of a flow that runs outside the
    main thread is an exception raised between two Python instructions, never inside one long wait.
    """
    wrapped = getattr(future, "wrapped_future", None)
    if isinstance(wrapped, concurrent.futures.Future):
        while not wrapped.done():
            concurrent.futures.wait([wrapped], timeout=WAIT_SLICE)
    return future.result()


def late_job(future: PrefectFuture[Any]) -> Job | None | bool:
    """What a submit still running when the flow stopped gave, within `LATE_RESULT_WAIT`:
    the job, ``None`` (it failed: no job), or ``False`` (no answer yet).
    """
    try:
        result = future.result(timeout=LATE_RESULT_WAIT, raise_on_failure=False)
    except Exception:  # still running
        return False
    return result if isinstance(result, Job) else None
