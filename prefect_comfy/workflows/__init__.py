"""Workflows: the formats a workflow comes in, the node catalog, and what a run may change in one.

Pure code with no network: a core room. ``load_workflow`` reads and checks a graph before anything
is sent.
"""

from prefect_comfy.workflows.load import load_workflow

__all__ = ["load_workflow"]
