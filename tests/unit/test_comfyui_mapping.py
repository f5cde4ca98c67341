"""ComfyUI answers and frames → the project's models and events (frames copied from
dev/comfyui-protocol-notes.md, as a real ComfyUI 0.3.75 sent them)."""

from __future__ import annotations

import pytest

from prefect_comfy.backends.comfyui import mapping as m
from prefect_comfy.exceptions import ComfyConfigError, InvalidWorkflow

PID = "ac5ece66-0000-4000-8000-000000000001"
ORIGIN = "http://127.0.0.1:8188"
GRAPH = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "ok"}},
}


def node(node_id: str, state: str, value: float = 0.0, max_: float = 1.0) -> dict:
    return {
        "value": value,
        "max": max_,
        "state": state,
        "node_id": node_id,
        "prompt_id": PID,
        "display_node_id": node_id,
        "parent_node_id": None,
        "real_node_id": node_id,
    }


SUCCESS_FRAMES = [
    ("execution_start", {"prompt_id": PID, "timestamp": 1795840045533}),
    ("execution_cached", {"nodes": [], "prompt_id": PID, "timestamp": 1795840045534}),
    ("progress_state", {"prompt_id": PID, "nodes": {"1": node("1", "running")}}),
    ("executing", {"node": "1", "display_node": "1", "prompt_id": PID}),
    ("progress_state", {"prompt_id": PID, "nodes": {"1": node("1", "finished", 1.0)}}),
    (
        "progress_state",
        {"prompt_id": PID, "nodes": {"1": node("1", "finished", 1.0), "2": node("2", "running")}},
    ),
    ("executing", {"node": "2", "display_node": "2", "prompt_id": PID}),
    (
        "progress_state",
        {
            "prompt_id": PID,
            "nodes": {"1": node("1", "finished", 1.0), "2": node("2", "finished", 1.0)},
        },
    ),
    ("executing", {"node": None, "prompt_id": PID}),
]

HISTORY_SUCCESS = {
    "prompt": [
        0,
        PID,
        GRAPH,
        {"client_id": "A", "create_time": 1795840045531, **m.extra_data_for(["t1"], None)},
        ["2"],
    ],
    "outputs": {
        "2": {"images": [{"filename": "ok_00001_.png", "subfolder": "", "type": "output"}]}
    },
    "status": {
        "status_str": "success",
        "completed": True,
        "messages": [
            ["execution_start", {"prompt_id": PID, "timestamp": 1795840045533}],
            ["execution_success", {"prompt_id": PID, "timestamp": 1795840045539}],
        ],
    },
    "meta": {},
}

EXECUTION_ERROR = {
    "prompt_id": PID,
    "node_id": "3",
    "node_type": "ImageBlur",
    "executed": ["1"],
    "exception_message": "Argument #4: Padding size should be less than the corresponding input dimension, but got: padding (31, 31) at dimension 3 of input [1, 3, 8, 8]\n",
    "exception_type": "RuntimeError",
    "traceback": ['  File "…/comfy_extras/nodes_post_processing.py", line 98, in execute\n …'],
    "current_inputs": {"image": ["tensor(...)"], "blur_radius": ["31"], "sigma": ["1.0"]},
    "current_outputs": ["2", "1", "3"],
    "timestamp": 1795840048423,
}

INTERRUPTED = {
    "prompt_id": PID,
    "node_id": "11",
    "node_type": "ImageBlur",
    "executed": ["10", "1"],
    "timestamp": 1795840053502,
}


def history(status_str: str, message: tuple[str, dict]) -> dict:
    return {
        "prompt": [3, PID, GRAPH, {"client_id": "A"}, ["2"]],
        "outputs": {},
        "status": {
            "status_str": status_str,
            "completed": False,
            "messages": [["execution_start", {"prompt_id": PID}], list(message)],
        },
        "meta": {},
    }


# -- progress ------------------------------------------------------------------------------------
def test_progress_from_real_success_frames() -> None:
    tracker = m.ProgressTracker()
    tracker.register(PID, GRAPH)
    payloads = [p for kind, data in SUCCESS_FRAMES if (p := tracker.feed(kind, data))]
    assert [(p["progress"], p.get("node_id")) for p in payloads] == [
        (0.0, None),  # execution_start
        (0.0, "1"),  # node 1 running
        (50.0, None),  # node 1 finished
        (50.0, "2"),  # node 2 running
        (m.RUNNING_CAP, None),  # both finished: 100 only with job.completed
    ]
    assert payloads[0] == {"id": PID, "status": "running", "progress": 0.0}
    assert payloads[3]["node_class"] == "SaveImage"
    assert "step" not in payloads[3]  # no steps (max 1): no "step 0/1" (issue 17, 3.3)
    assert all(p["status"] == "running" for p in payloads)
    # identical updates are coalesced: feeding the same frames again adds nothing
    assert [tracker.feed(k, d) for k, d in SUCCESS_FRAMES[-2:]] == [None, None]


def test_progress_counts_sampler_steps_and_cached_nodes() -> None:
    graph = {str(i): {"class_type": "X"} for i in range(1, 5)}
    graph["3"]["class_type"] = "KSampler"
    tracker = m.ProgressTracker()
    tracker.register("p", graph)
    tracker.feed("execution_cached", {"nodes": ["1", "2"], "prompt_id": "p"})
    tracker.feed("executing", {"node": "3", "prompt_id": "p"})
    payload = tracker.feed("progress", {"value": 10, "max": 20, "prompt_id": "p", "node": "3"})
    assert payload == {
        "id": "p",
        "status": "running",
        "progress": 62.5,  # (2 cached + 10/20) of 4 nodes
        "node_id": "3",
        "node_class": "KSampler",
        "step": 10,
        "steps": 20,
    }
    assert tracker.feed("progress", {"value": 10, "max": 20, "prompt_id": "p", "node": "3"}) is None


def test_progress_stays_below_100_and_ignores_other_frames() -> None:
    tracker = m.ProgressTracker()
    tracker.register("p", {"1": {"class_type": "A"}})
    payload = tracker.feed(
        "progress_state", {"prompt_id": "p", "nodes": {"1": node("1", "finished", 1.0)}}
    )
    assert payload["progress"] == m.RUNNING_CAP
    assert tracker.feed("status", {"status": {}}) is None
    assert tracker.feed("executed", {"prompt_id": "p", "node": "1"}) is None
    assert tracker.feed("progress", {"value": 1, "max": 2}) is None  # no prompt id


def test_progress_of_an_unregistered_prompt_counts_nodes_seen() -> None:
    tracker = m.ProgressTracker()
    payload = tracker.feed(
        "progress_state",
        {
            "prompt_id": "x",
            "nodes": {"1": node("1", "finished", 1.0), "2": node("2", "running", 1, 4)},
        },
    )
    assert payload["progress"] == 62.5 and "node_class" not in payload


# -- history → jobs and events ---------------------------------------------------------------------
def test_completed_job_and_outputs_from_history() -> None:
    job = m.job_from_history(PID, HISTORY_SUCCESS, ORIGIN)
    assert job.status == "completed" and job.tags == ["t1"]
    [output] = job.outputs
    assert output.id == f"{PID}:2:ok_00001_.png"
    assert output.name == "ok_00001_.png"
    assert output.type == "image" and output.mime_type == "image/png"
    assert output.download_url == f"{ORIGIN}/api/view?filename=ok_00001_.png&subfolder=&type=output"
    name, payload = m.outcome_event(PID, HISTORY_SUCCESS, ORIGIN)
    assert name == "job.completed" and payload["outputs"][0]["name"] == "ok_00001_.png"
    assert payload["tags"] == ["t1"]


def test_failed_job_from_history_keeps_the_error() -> None:
    entry = history("error", ("execution_error", EXECUTION_ERROR))
    job = m.job_from_history(PID, entry, ORIGIN)
    assert job.status == "failed"
    assert job.error.code == "RuntimeError" and job.error.node_id == "3"
    assert job.error.message.startswith("Argument #4: Padding size")
    assert not job.error.message.endswith("\n")
    name, payload = m.outcome_event(PID, entry, ORIGIN)
    assert name == "job.failed"
    assert payload["error"]["node_type"] == "ImageBlur"
    assert "traceback" not in payload["error"]


def test_interrupt_is_cancelled_although_status_str_is_error() -> None:
    entry = history("error", ("execution_interrupted", INTERRUPTED))
    assert m.job_from_history(PID, entry, ORIGIN).status == "cancelled"
    name, payload = m.outcome_event(PID, entry, ORIGIN)
    assert (name, payload["node_id"], payload["node_type"]) == ("job.cancelled", "11", "ImageBlur")


def test_failed_payload_from_the_frame() -> None:
    payload = m.failed_payload(PID, EXECUTION_ERROR, ["a"])
    assert payload == {
        "id": PID,
        "status": "failed",
        "tags": ["a"],
        "error": {
            "code": "RuntimeError",
            "message": EXECUTION_ERROR["exception_message"].strip(),
            "node_id": "3",
            "node_type": "ImageBlur",
        },
    }


def test_queue_items_and_tags() -> None:
    item = [6, "5f73", GRAPH, {"client_id": "A", **m.extra_data_for(["x", "x", "y"], "k1")}, ["2"]]
    record = m.prompt_record(item)
    assert record.prompt_id == "5f73" and record.tags == ["x", "y"]
    assert record.extra_data[m.EXTRA_KEY]["idempotency_key"] == "k1"
    assert m.job_from_queue("5f73", item, "pending").tags == ["x", "y"]
    assert m.prompt_record(["bad"]) is None
    assert m.tags_of({"client_id": "A"}) == []


def test_outputs_of_every_kind_and_subfolder() -> None:
    outputs = {
        "9": {
            "images": [{"filename": "a b.png", "subfolder": "sub", "type": "temp"}],
            "gifs": [{"filename": "clip.mp4", "subfolder": "", "type": "output"}],
            "text": ["not a file"],
        }
    }
    found = m.outputs_from_history("p", outputs, ORIGIN)
    assert [(o.id, o.type) for o in found] == [
        ("p:9:sub/a b.png", "image"),
        ("p:9:clip.mp4", "video"),
    ]
    assert found[0].download_url == f"{ORIGIN}/api/view?filename=a+b.png&subfolder=sub&type=temp"
    # PreviewImage's "temp" files are told apart from saved outputs
    assert [o.temporary for o in found] == [True, False]


# -- refused graphs -------------------------------------------------------------------------------
def test_missing_input_names_node_class_and_input() -> None:
    body = {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {
            "1": {
                "errors": [
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": "width",
                        "extra_info": {"input_name": "width"},
                    }
                ],
                "dependent_outputs": ["2"],
                "class_type": "EmptyImage",
            }
        },
    }
    exc = m.invalid_workflow(body)
    assert isinstance(exc, InvalidWorkflow)
    assert exc.node_errors == [
        {
            "node_id": "1",
            "class_type": "EmptyImage",
            "field": "width",
            "message": "Required input is missing",
            "type": "required_input_missing",
        }
    ]
    assert "node 1 (EmptyImage), input 'width': Required input is missing" in str(exc)
    assert "prompt_outputs_failed_validation" in str(exc)


def test_custom_validation_keeps_details() -> None:
    body = {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
        },
        "node_errors": {
            "1": {
                "errors": [
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": "image - Invalid image file: missing.png",
                        "extra_info": {"input_name": "image"},
                    }
                ],
                "class_type": "LoadImage",
            }
        },
    }
    [entry] = m.invalid_workflow(body).node_errors
    assert (
        entry["message"]
        == "Custom validation failed for node: image - Invalid image file: missing.png"
    )
    assert entry["field"] == "image"


def test_unknown_node_class_is_named_from_details() -> None:
    body = {
        "error": {
            "type": "invalid_prompt",
            "message": "Cannot execute because node NoSuchNode does not exist.",
            "details": "Node ID '#1'",
            "extra_info": {},
        },
        "node_errors": {},
    }
    exc = m.invalid_workflow(body)
    assert exc.node_errors == [
        {
            "node_id": "1",
            "message": "Cannot execute because node NoSuchNode does not exist.",
            "type": "invalid_prompt",
        }
    ]
    assert "node 1: Cannot execute because node NoSuchNode" in str(exc)


def test_no_outputs_is_a_workflow_level_problem() -> None:
    body = {
        "error": {
            "type": "prompt_no_outputs",
            "message": "Prompt has no outputs",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {},
    }
    [entry] = m.invalid_workflow(body).node_errors
    assert entry == {"message": "Prompt has no outputs", "type": "prompt_no_outputs"}


# -- models ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("checkpoints/sd15.safetensors", ("checkpoints", "sd15.safetensors")),
        ("checkpoint/sd15.safetensors", ("checkpoints", "sd15.safetensors")),
        ("lora/sub/x.safetensors", ("loras", "sub/x.safetensors")),
        ("clip/t5.safetensors", ("text_encoders", "t5.safetensors")),
        ("unet/flux.safetensors", ("diffusion_models", "flux.safetensors")),
        ("upscaler/4x.pth", ("upscale_models", "4x.pth")),
    ],
)
def test_model_location(model_id: str, expected: tuple[str, str]) -> None:
    assert m.model_location(model_id) == expected


def test_model_id_needs_a_folder() -> None:
    with pytest.raises(ComfyConfigError, match="<folder>/<filename>"):
        m.model_location("model.safetensors")
