"""ComfyUI's execution frames turned into ``job.progress`` payloads, with no I/O.

``execution_start``, ``execution_cached``, ``progress_state``, ``executing`` and ``progress`` frames
(`PROGRESS_FRAMES`) feed one `ProgressTracker` per stream; the percentage stays below
`RUNNING_CAP` until ``job.completed`` says 100.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect_comfy.bounded import Bounded

__all__ = ["PROGRESS_FRAMES", "RUNNING_CAP", "ProgressTracker"]

PROGRESS_FRAMES: frozenset[str] = frozenset(
    {"execution_start", "execution_cached", "progress_state", "executing", "progress"}
)
RUNNING_CAP = 99.0
"""``job.progress`` stays below 100 until the job has completed."""


@dataclass
class _Prompt:
    classes: dict[str, str] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    node: str | None = None
    value: float = 0.0
    max: float = 0.0
    last: tuple[Any, ...] | None = None


class ProgressTracker:
    """Turns a prompt's execution frames into ``job.progress`` payloads, identical ones dropped.

    Percent = 100 × (nodes done + the current node's ``value/max``) / nodes in the graph, below
    `RUNNING_CAP` until the job completes. Nodes done are those ``progress_state`` reports
    ``finished`` and those ``execution_cached`` names. The graph size comes from `register`
    (a prompt submitted here) and otherwise is the number of nodes seen so far.

    Example:
        >>> t = ProgressTracker()
        >>> t.register("p", {"1": {"class_type": "EmptyImage"}, "2": {"class_type": "SaveImage"}})
        >>> t.feed("executing", {"node": "2", "prompt_id": "p"})["node_class"]
        'SaveImage'
    """

    def __init__(self, max_prompts: int = 1024) -> None:
        self._prompts = Bounded(max_prompts)

    def register(self, prompt_id: str, graph: Mapping[str, Any]) -> None:
        """Remember a prompt's node classes (and so its size)."""
        prompt = self._get(prompt_id)
        for node_id, node in graph.items():
            if isinstance(node, Mapping):
                prompt.classes[str(node_id)] = str(node.get("class_type") or "")

    def forget(self, prompt_id: str) -> None:
        """Drop a finished prompt."""
        self._prompts.take(prompt_id)

    def _get(self, prompt_id: str) -> _Prompt:
        prompt = self._prompts.get(prompt_id)
        if prompt is None:
            prompt = _Prompt()
            self._prompts.remember(prompt_id, prompt)
        return prompt

    def feed(self, frame_type: str, data: Mapping[str, Any]) -> dict[str, Any] | None:
        """The ``job.progress`` payload for one frame, or ``None`` (not progress, or no change)."""
        prompt_id = data.get("prompt_id")
        if frame_type not in PROGRESS_FRAMES or not prompt_id:
            return None
        prompt_id = str(prompt_id)
        prompt = self._get(prompt_id)
        if frame_type == "execution_cached":
            prompt.done.update(str(n) for n in data.get("nodes") or [])
        elif frame_type == "progress_state":
            for node_id, node in (data.get("nodes") or {}).items():
                if not isinstance(node, Mapping):
                    continue
                node_id = str(node.get("node_id") or node_id)
                prompt.classes.setdefault(node_id, "")
                if node.get("state") == "finished":
                    prompt.done.add(node_id)
                elif node.get("state") == "running":
                    prompt.node = node_id
                    prompt.value = float(node.get("value") or 0)
                    prompt.max = float(node.get("max") or 0)
        elif frame_type == "executing":
            node_id = data.get("node")
            if node_id is None:
                return None  # the worker finished the prompt; the outcome frame says how
            if str(node_id) != prompt.node:
                prompt.node, prompt.value, prompt.max = str(node_id), 0.0, 0.0
            prompt.classes.setdefault(str(node_id), "")
        elif frame_type == "progress":
            node_id = data.get("node")
            if node_id is not None:
                prompt.node = str(node_id)
                prompt.classes.setdefault(prompt.node, "")
            prompt.value = float(data.get("value") or 0)
            prompt.max = float(data.get("max") or 0)
        return self._payload(prompt_id, prompt)

    def _payload(self, prompt_id: str, prompt: _Prompt) -> dict[str, Any] | None:
        total = max(len(prompt.classes), len(prompt.done), 1)
        node = prompt.node if prompt.node not in prompt.done else None
        fraction = (
            min(1.0, prompt.value / prompt.max) if node is not None and prompt.max > 0 else 0.0
        )
        percent = round(min(RUNNING_CAP, 100.0 * (len(prompt.done) + fraction) / total), 1)
        # A node without steps reports max 1: it has no "step 0/1" to show.
        step = int(prompt.value) if node is not None and prompt.max > 1 else None
        steps = int(prompt.max) if node is not None and prompt.max > 1 else None
        key = (percent, node, step, steps)
        if key == prompt.last:
            return None
        prompt.last = key
        payload: dict[str, Any] = {"id": prompt_id, "status": "running", "progress": percent}
        if node is not None:
            payload["node_id"] = node
            if prompt.classes.get(node):
                payload["node_class"] = prompt.classes[node]
        if step is not None:
            payload["step"], payload["steps"] = step, steps
        return payload
