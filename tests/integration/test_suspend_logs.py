"""The task run that a suspending wait leaves logs no ERROR (Prefect's engine, a real server)."""

from __future__ import annotations

import logging

import pytest
from prefect import flow, task
from prefect.exceptions import Pause

from prefect_comfy.orchestration.runs import SUSPENDED_TASK_MESSAGE, quiet_suspended_task_finish


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_task_left_by_a_suspension_logs_info_not_error(prefect_api_url):
    @task
    def suspending_wait() -> None:
        quiet_suspended_task_finish()
        raise Pause("suspended while the Comfy job runs")

    @task
    def other_pause() -> None:
        raise Pause("another pause")

    @flow
    def parent(quiet: bool) -> None:
        suspending_wait() if quiet else other_pause()

    handler = Records()
    logger = logging.getLogger("prefect.task_runs")
    logger.addHandler(handler)
    try:
        for quiet in (True, False):
            with pytest.raises(Pause):  # out of a flow called directly
                parent(quiet)
    finally:
        logger.removeHandler(handler)
    finished = {
        r.task_name.split("-")[0]: (r.levelname, r.getMessage())  # type: ignore[attr-defined]
        for r in handler.records
        if r.getMessage().startswith(("Finished in state", SUSPENDED_TASK_MESSAGE))
    }
    assert finished == {
        "suspending_wait": ("INFO", SUSPENDED_TASK_MESSAGE),
        "other_pause": ("ERROR", "Finished in state Running()"),  # Prefect's, left alone
    }
