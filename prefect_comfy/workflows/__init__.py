"""Workflows: the formats a workflow comes in, the node catalog, and what a run may change in one.

Pure code with no network: a core room. ``load_workflow`` reads and checks a graph before anything
is sent.
"""

from prefect_comfy.workflows.catalog import InputSpec, NodeCatalog, NodeSpec
from prefect_comfy.workflows.convert import (
    ApiWorkflow,
    convert_workflow,
    is_save_format,
    to_api_format,
)
from prefect_comfy.workflows.load import load_workflow

__all__ = [
    "ApiWorkflow",
    "InputSpec",
    "NodeCatalog",
    "NodeSpec",
    "convert_workflow",
    "is_save_format",
    "load_workflow",
    "to_api_format",
]
