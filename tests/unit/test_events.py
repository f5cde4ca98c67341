"""prefect_comfy.orchestration.events.names: names, resources, ids; and the docs' event reference against the module."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

from prefect_comfy.models import ComfyEvent
from prefect_comfy.orchestration.events import names as events

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"
FLOW_RUN = str(uuid.uuid4())


def documented_event_names() -> list[str]:
    """The first column of the rows of the "Event reference" table in docs/events.md."""
    text = DOCS.read_text()
    section = text.split("## Event reference", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z.\-]+)` \|", section, flags=re.MULTILINE)


def test_docs_list_exactly_the_event_names():
    names = documented_event_names()
    assert len(names) == len(set(names)), "an event is documented twice"
    assert set(names) == set(events.EVENT_NAMES)


def test_event_names_follow_the_prefix():
    for name in events.EVENT_NAMES:
        assert name.startswith("comfy.")
    assert events.JOB_PROGRESS not in events.NEVER_THROTTLED
    assert events.JOB_TIMED_OUT in events.NEVER_THROTTLED


def test_resource_ids_and_names():
    assert events.prefect_event_name("job.completed") == "comfy.job.completed"
    assert events.resource_id("job", "job_1") == "comfy.job.job_1"
    assert events.flow_run_id_from_tags(["a", f"prefect.flow-run.{FLOW_RUN}"]) == FLOW_RUN
    assert events.flow_run_id_from_tags(["a"]) is None


def test_from_comfy_event_relates_flow_run_from_tags():
    when = datetime(2025, 1, 1, tzinfo=UTC)
    ev = ComfyEvent(
        event="job.completed",
        payload={
            "id": "j",
            "status": "completed",
            "tags": ["t1", f"prefect.flow-run.{FLOW_RUN}"],
            "at": when,
        },
    )
    event = events.from_comfy_event(ev, address="http://a", backend_kind="cloud")
    assert event.resource["comfy.tags"] == "t1"
    assert f"prefect.flow-run.{FLOW_RUN}" in {r.id for r in event.related}
    assert json.loads(json.dumps(event.payload))["at"] == when.isoformat()


def test_event_ids_are_deterministic():
    a = events.event_id("http://a", "comfy.job.completed", "comfy.job.j")
    assert a == events.event_id("http://a", "comfy.job.completed", "comfy.job.j")
    assert a != events.event_id("http://b", "comfy.job.completed", "comfy.job.j")
    p1 = ComfyEvent(event="job.progress", payload={"id": "j", "progress": 10})
    p2 = ComfyEvent(event="job.progress", payload={"id": "j", "progress": 20})
    assert events.occurrence_of(p1) != events.occurrence_of(p2)
    assert events.occurrence_of(ComfyEvent(event="job.failed", payload={"id": "j"})) == ""


def test_one_jobs_end_is_one_event_whichever_address_saw_it():
    """Regression (issue 17, 3.5): a ComfyUI listener and a v2 flow through comfy-api-proxy on the
    same ComfyUI saw one prompt id through two addresses and sent two ``comfy.job.completed``."""
    job = events.resource_id("job", str(uuid.uuid4()))
    direct = events.event_id("http://127.0.0.1:8188", events.JOB_COMPLETED, job)
    proxied = events.event_id("http://127.0.0.1:9000", events.JOB_COMPLETED, job)
    assert direct == proxied
    # Progress stays per path (its values differ), and short ids stay per server.
    assert events.event_id("http://a", events.JOB_PROGRESS, job, "1|3|1|8") != events.event_id(
        "http://b", events.JOB_PROGRESS, job, "1|3|1|8"
    )
    short = events.resource_id("job", "job_1")
    assert events.event_id("http://a", events.JOB_COMPLETED, short) != events.event_id(
        "http://b", events.JOB_COMPLETED, short
    )


def test_model_type_label():
    res = events.resource_for(
        "model", {"id": "m", "name": "x.safetensors", "type": "lora"}, backend_kind="cloud"
    )
    assert res["comfy.model-type"] == "lora"
    assert res["prefect.resource.name"] == "x.safetensors"
