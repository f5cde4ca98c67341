"""The error tree: one root, the one retry rule, messages that say what to do."""

from __future__ import annotations

import pytest

from prefect_comfy import exceptions as exc


@pytest.mark.parametrize(
    "error,retryable",
    [
        (exc.ComfyTransportError("reset"), True),
        (exc.RateLimited("slow down", status_code=429, retry_after=2.0), True),
        (exc.ServerError("boom", status_code=503), True),
        (exc.WebSocketConnectionError("gone"), True),
        (exc.AuthenticationError("key", status_code=401), False),
        (exc.NotFound("nope", status_code=404), False),
        (exc.InvalidRequest("bad", status_code=400), False),
        (exc.InvalidWorkflow("bad graph"), False),
        (exc.WebSocketAuthError("key"), False),
        (exc.JobFailed("job_1", error_code="oom", error_message="x"), False),
        (exc.JobTimedOut("job_1", timeout=5, status="running"), False),
        (ValueError("not ours"), False),
    ],
)
def test_is_retryable(error: BaseException, retryable: bool):
    assert exc.is_retryable(error) is retryable


def test_every_error_has_one_root():
    for name in exc.__all__:
        obj = getattr(exc, name)
        if isinstance(obj, type):
            assert issubclass(obj, exc.ComfyError), name


def test_invalid_workflow_names_each_node():
    err = exc.InvalidWorkflow(
        "The workflow was refused",
        [
            {"node_id": "3", "class_type": "KSampler", "field": "steps", "message": "must be > 0"},
            {"node_id": "9", "message": "unknown node class 'Nope'"},
        ],
    )
    text = str(err)
    assert "node 3 (KSampler), input 'steps': must be > 0" in text
    assert "node 9: unknown node class 'Nope'" in text
    assert len(err.node_errors) == 2


def test_outcome_errors_carry_structure():
    failed = exc.JobFailed("job_1", error_code="oom", error_message="out of memory", node_id="3")
    assert (failed.job_id, failed.status, failed.error_code, failed.node_id) == (
        "job_1",
        "failed",
        "oom",
        "3",
    )
    assert "job_1" in str(failed) and "node 3" in str(failed) and "oom" in str(failed)
    timed_out = exc.JobTimedOut("job_2", timeout=1.5, status="running")
    assert isinstance(timed_out, TimeoutError)
    assert "job_2" in str(timed_out) and "running" in str(timed_out)
    assert exc.JobCancelled("job_3").status == "cancelled"
    upload = exc.UploadFailed("input", "inp_1", error_code="download_failed", error_message="404")
    assert upload.kind == "input" and "inp_1" in str(upload)
