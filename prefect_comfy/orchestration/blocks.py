"""The package's Prefect blocks, in one place: importing this module defines all four.

Prefect finds a collection's blocks by importing a module: a server imports the module named by
the ``prefect.collections`` entry point (this one, see ``pyproject.toml``) and registers every
block class then defined; ``prefect block register -m MODULE`` registers the block classes it
finds among the module's names. ``import prefect_comfy`` imports nothing heavy (its names are
imported on first use), so the entry point names this module instead; ``prefect block register -m
prefect_comfy`` still works, since it asks the package for each of its names.

Example:
    >>> from prefect_comfy.orchestration import blocks
    >>> blocks.__all__
    ['ComfyCloudCredentials', 'ComfyUIServer', 'ComfyV2Credentials', 'ComfyWorkflow']
"""

from prefect_comfy.backends.registry import (
    ComfyCloudCredentials,
    ComfyUIServer,
    ComfyV2Credentials,
)
from prefect_comfy.orchestration.jobs import ComfyWorkflow

__all__ = ["ComfyCloudCredentials", "ComfyUIServer", "ComfyV2Credentials", "ComfyWorkflow"]
