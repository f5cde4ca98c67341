"""The client's wire models: lenient on unknown fields, strict on the ones they know."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from prefect_comfy.models import (
    STATUS_EVENT,
    TERMINAL_EVENTS,
    ComfyEvent,
    Input,
    Job,
    Model,
    Output,
    ResourceError,
)


def test_job_ignores_unknown_fields_and_reads_outputs():
    job = Job.model_validate(
        {
            "id": "job_1",
            "status": "completed",
            "brand_new_field": {"x": 1},
            "outputs": [
                {"id": "out_1", "type": "image", "download_url": "https://s/x.png", "z": 2}
            ],
            "created_at": "2024-01-15T10:30:00Z",
        }
    )
    assert job.is_terminal
    assert job.outputs[0].download_url == "https://s/x.png"
    assert job.created_at is not None and job.created_at.year == 2024


@pytest.mark.parametrize(
    "status,terminal",
    [("pending", False), ("running", False), ("failed", True), ("cancelled", True)],
)
def test_job_terminal_states(status: str, terminal: bool):
    assert Job(id="j", status=status).is_terminal is terminal


def test_known_fields_are_validated():
    with pytest.raises(ValidationError):
        Job.model_validate({"status": "running"})  # no id
    with pytest.raises(ValidationError):
        Output.model_validate({"id": "o", "size": "not a number"})


def test_resource_error_reads_code_or_type():
    assert ResourceError.model_validate({"type": "oom", "message": "m"}).code == "oom"
    assert ResourceError.model_validate({"code": "a", "type": "b"}).code == "a"


def test_input_and_model_terminal_states():
    assert Input(id="i", name="a.png", status="ready").is_terminal
    assert not Input(id="i", name="a.png", status="downloading").is_terminal
    model = Model.model_validate(
        {"id": "m", "name": "x.safetensors", "status": "failed", "type": "lora"}
    )
    assert model.is_terminal and model.type == "lora"


def test_event_properties():
    event = ComfyEvent(event="job.completed", payload={"id": "job_9", "status": "completed"})
    assert (event.kind, event.resource_id, event.is_terminal) == ("job", "job_9", True)
    progress = ComfyEvent(event="job.progress", payload={"id": 5, "progress": 10})
    assert progress.resource_id == "5" and not progress.is_terminal
    assert ComfyEvent(event="something.new").resource_id is None


def test_status_event_table_covers_every_terminal_event():
    assert set(STATUS_EVENT.values()) == TERMINAL_EVENTS
    for (kind, status), name in STATUS_EVENT.items():
        assert name == f"{kind}.{'ready' if status == 'ready' else status}"
