"""The metadata labels a job submitted through prefect-comfy carries on Comfy API v2.

v2 metadata is string labels (16 at most; comfy-api-proxy 0.1.6 keeps one opaque string of at most
1,024 bytes instead). A job carries:

- ``prefect_idempotency_key``: the submit's ``Idempotency-Key`` (a retried submit finds its job by it);
- ``prefect_flow_run_id`` and ``prefect_task_run_id``: the Prefect run that submitted it;
- ``prefect_tags``: its tags, comma-joined, and ``tag:<tag> = "1"`` for each of the first
  `MAX_TAG_LABELS` (v2 filters metadata by equality, so a tag is a label).

Example:
    >>> sorted(labels_for(["a"], "k1"))
    ['prefect_idempotency_key', 'prefect_tags', 'tag:a']
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from prefect_comfy.backends.v2 import mapping

__all__ = ["KEY_LABEL", "MAX_METADATA_TEXT", "MAX_TAG_LABELS", "labels_for", "metadata_text"]

MAX_TAG_LABELS = 12
"""Tags carried as ``tag:<tag>`` metadata labels (v2 allows 16 labels; 4 are the run's ids)."""
KEY_LABEL = "prefect_idempotency_key"
MAX_METADATA_TEXT = 1024


def labels_for(tags: Sequence[str], key: str) -> dict[str, str]:
    """The labels of a job submitted with these tags and this ``Idempotency-Key``."""
    metadata = {KEY_LABEL: key, **_run_ids()}
    if tags:
        metadata["prefect_tags"] = ",".join(tags)[:512]
    for tag in list(dict.fromkeys(tags))[:MAX_TAG_LABELS]:
        metadata[f"{mapping.TAG_PREFIX}{tag}"[:128]] = "1"
    return metadata


def _run_ids() -> dict[str, str]:
    """The Prefect flow-run and task-run ids of the current run, if any (no Prefect import above)."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except ImportError:  # pragma: no cover - Prefect is a dependency
        return {}
    found: dict[str, str] = {}
    task = TaskRunContext.get()
    flow = FlowRunContext.get()
    if task is not None:
        found["prefect_task_run_id"] = str(task.task_run.id)
        if task.task_run.flow_run_id:
            found["prefect_flow_run_id"] = str(task.task_run.flow_run_id)
    if flow is not None and flow.flow_run is not None:
        found.setdefault("prefect_flow_run_id", str(flow.flow_run.id))
    return found


def metadata_text(metadata: dict[str, str]) -> str:
    """The labels as compact JSON within `MAX_METADATA_TEXT` bytes (tag labels dropped first)."""
    labels = dict(metadata)
    text = json.dumps(labels, separators=(",", ":"))
    while len(text.encode()) > MAX_METADATA_TEXT:
        extra = [k for k in labels if k.startswith(mapping.TAG_PREFIX)] or ["prefect_tags"]
        labels.pop(extra[-1], None)
        text = json.dumps(labels, separators=(",", ":"))
    return text
