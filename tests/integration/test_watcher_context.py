"""The CLI's flow-run watcher under Prefect settings that live only in a context (as in the demo).

``make demo`` sets the Prefect API URL with ``temporary_settings`` after Prefect was imported. The
watcher's thread used to start with empty context variables, read Prefect's import-time settings
(no API URL) and start a temporary server of its own: the demo's first job never showed its bar.
"""

from __future__ import annotations

import logging

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, temporary_settings

from prefect_comfy import ComfyCloudCredentials
from prefect_comfy.cli.flow_run import JOB_ID_LABEL, FlowRunWatcher
from prefect_comfy.cli.progress import JobBoard
from prefect_comfy.orchestration.tasks import submit_comfy_job
from tests.support.keys import API_KEY
from tests.support.waiting import eventually_sync
from tests.support.workflows import tiny_workflow

pytestmark = pytest.mark.prefect


def test_the_watcher_thread_uses_the_settings_of_its_caller(
    emulator, prefect_api_url, monkeypatch, caplog
) -> None:
    # Only the context holds the API URL: neither the environment nor Prefect's root settings do.
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    credentials = ComfyCloudCredentials(api_key=API_KEY, base_url=emulator.url)
    board = JobBoard()
    watcher = FlowRunWatcher(credentials, board)

    @flow(name="comfy-watcher-context", on_running=[watcher.on_running])
    def watched() -> str:
        job = submit_comfy_job.submit(credentials, tiny_workflow("watcher")).result()
        run_id = FlowRunContext.get().flow_run.id
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(run_id, {JOB_ID_LABEL: job.id})
        # The watcher reads the label from the server this flow runs on.
        eventually_sync(lambda: watcher.job_id, timeout=60, message="the watcher to see the job")
        return job.id

    caplog.set_level(logging.INFO)
    with temporary_settings({PREFECT_API_URL: prefect_api_url}), board:
        try:
            job_id = watched()
        finally:
            watcher.stop()
    assert watcher.job_id == job_id
    # The watcher drew the job's row; it may have seen the tiny job end already (it fills the bar
    # as soon as it sees the end, so the bar never lags the log's "completed").
    status = board.row(job_id)["status"]
    assert status in {"submitted", "running"} or "completed" in status, status
    assert "temporary server" not in caplog.text.lower()
