"""v2 progress snapshots read against the submitted graph (issue 17, 3.2 and 3.3)."""

from __future__ import annotations

from prefect_comfy.backends.v2.mapping import JobProgress, progress_payload
from prefect_comfy.orchestration.events.names import job_position, job_progress_labels

TXT2IMG = {
    "4": "CheckpointLoaderSimple",
    "5": "EmptyLatentImage",
    "6": "CLIPTextEncode",
    "7": "CLIPTextEncode",
    "3": "KSampler",
    "8": "VAEDecode",
    "9": "SaveImage",
}


def state(done: int, total: int, node: str | None, step=None, steps=None) -> dict:
    """A ``progress`` frame comfy-api-proxy 0.1.6 makes from ComfyUI's ``progress_state``."""
    value = (done + (step / steps if steps else 0)) / total
    return {"value": value, "nodes_done": done, "nodes_total": total, "current_node": node,
            "step": step, "steps": steps}  # fmt: skip


def step(node: str, n: int, of: int) -> dict:
    """One it makes from ComfyUI's ``progress`` (the node's own fraction, no node counts)."""
    return {"value": n / of, "nodes_done": 0, "nodes_total": 0, "current_node": node,
            "step": n, "steps": of}  # fmt: skip


# What the proxy sent for the txt2img graph on a real ComfyUI (it has seen 1, then 5 nodes).
PROXY_FRAMES = [
    state(1, 1, None),  # the loader finished: 100 % of what it has seen
    state(4, 5, "3", 0, 8),
    step("3", 1, 8),
    step("3", 5, 8),
    state(4, 5, "3", 8, 8),
    state(5, 6, "8", 0, 1),
    state(6, 7, "9", 0, 1),
]


def test_proxy_snapshots_against_the_graph_never_go_back_and_name_the_node() -> None:
    progress = JobProgress(TXT2IMG)
    payloads = [progress.payload("j", raw) for raw in PROXY_FRAMES]
    percents = [p["progress"] for p in payloads]
    assert percents == sorted(percents) and percents[-1] < 99.9, percents
    assert percents[0] == round(100 / 7, 1)
    assert payloads[3]["node_class"] == "KSampler" and payloads[3]["step"] == 5
    assert 4 / 7 * 100 < payloads[3]["progress"] < 5 / 7 * 100


def test_the_old_reading_of_the_same_frames_went_back() -> None:
    """What the regression was: the proxy's own value, read as the job's."""
    percents = [progress_payload("j", raw)["progress"] for raw in PROXY_FRAMES]
    assert percents != sorted(percents)
    assert "node_class" not in progress_payload("j", step("3", 5, 8))


def test_without_the_graph_the_server_value_never_goes_back() -> None:
    progress = JobProgress()
    percents = [progress.payload("j", raw)["progress"] for raw in PROXY_FRAMES]
    assert percents == sorted(percents)


def test_a_node_without_steps_says_no_step_0_of_1() -> None:
    payload = JobProgress(TXT2IMG).payload("j", state(5, 6, "8", 0, 1))
    assert "step" not in payload
    labels = job_progress_labels(payload)
    assert "comfy.step" not in labels and job_position(labels) == "VAEDecode"
    # and the labels of a payload that still carries one step
    labels = job_progress_labels(
        {"progress": 71.4, "node_class": "VAEDecode", "step": 0, "steps": 1}
    )
    assert job_position(labels) == "VAEDecode"


NEEDS = {"4": set(), "5": set(), "6": {"4"}, "7": {"4"}, "3": {"4", "5", "6", "7"}, "8": {"3", "4"},
         "9": {"8"}}  # fmt: skip


def test_a_warm_job_counts_the_cached_nodes_upstream_of_the_running_one() -> None:
    """Measured through comfy-api-proxy on a warm ComfyUI: KSampler's steps at 1.8-14.3 % (the
    proxy never counts cached nodes); everything upstream of a running node is done."""
    progress = JobProgress(TXT2IMG, NEEDS)
    payloads = [progress.payload("j", step("3", n, 8)) for n in range(1, 9)]
    assert [p["progress"] for p in payloads] == [58.9, 60.7, 62.5, 64.3, 66.1, 67.9, 69.6, 71.4]
