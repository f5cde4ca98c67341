"""Save format -> API format, the way the ComfyUI editor's own ``graphToPrompt()`` does it.

Pure and deterministic: no I/O, nothing randomized.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect_comfy.workflows.catalog import NodeCatalog

__all__ = ["ApiWorkflow", "convert_workflow", "is_save_format", "to_api_format"]


@dataclass(frozen=True)
class ApiWorkflow:
    """A converted workflow.

    Attributes:
        graph: the API-format graph (node id -> ``{"inputs", "class_type", "_meta"}``).
        controls: ``(api node id, input name) -> control`` for every widget that had a
            ``control_after_generate`` companion: ``"fixed"``, ``"increment"``, ``"decrement"``
            or ``"randomize"``. A run gives the ``"randomize"`` ones a fresh value.
    """

    graph: dict[str, Any]
    controls: dict[tuple[str, str], str] = field(default_factory=dict)


def is_save_format(obj: Any) -> bool:
    """Whether ``obj`` is a workflow in the editor's save format (it has a ``nodes`` list)."""
    return isinstance(obj, Mapping) and isinstance(obj.get("nodes"), list)


def convert_workflow(
    workflow: Mapping[str, Any], object_info: Mapping[str, Any] | NodeCatalog
) -> ApiWorkflow:
    """Convert a save-format workflow into an API-format graph, with its seed controls."""
    raise NotImplementedError  # skeleton


def to_api_format(
    workflow: Mapping[str, Any], object_info: Mapping[str, Any] | NodeCatalog
) -> dict[str, Any]:
    """The API-format graph of a save-format workflow: ``convert_workflow(...).graph``."""
    return convert_workflow(workflow, object_info).graph
