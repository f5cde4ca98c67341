"""Small API-format workflows for tests (no KSampler: they run in milliseconds on the emulator).

``EmulatorFail`` and ``EmulatorSleep`` are emulator-only node classes: the first passes validation and
then fails the job, the second runs in slices of 0.05 s, each a cancel checkpoint.
"""

from __future__ import annotations

from typing import Any


def tiny_workflow(prefix: str = "test", *, width: int = 64, height: int = 64) -> dict[str, Any]:
    """One small solid image, saved: the quickest job that produces a PNG output."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def failing_workflow(message: str = "boom", *, code: str | None = None) -> dict[str, Any]:
    """A workflow that validates, then fails when it runs, with ``message`` (and ``code``)."""
    inputs: dict[str, Any] = {"message": message}
    if code is not None:
        inputs["code"] = code
    return {"1": {"class_type": "EmulatorFail", "inputs": inputs}}


def slow_workflow(steps: int = 20, *, step_seconds: float = 0.05) -> dict[str, Any]:
    """A workflow that runs ``steps`` slices of ``step_seconds`` (each a cancel checkpoint), then saves."""
    wf = tiny_workflow("slow")
    wf["3"] = {
        "class_type": "EmulatorSleep",
        "inputs": {"seconds": steps * step_seconds, "images": ["1", 0]},
    }
    wf["2"]["inputs"]["images"] = ["3", 0]
    return wf
