"""A local emulator of the Comfy Cloud developer API and of Comfy API v2, for tests and the demo.

Strict about what it accepts, faithful in what it answers; see ``docs/emulator.md``. Its parts:
``wire`` (request models, errors), ``nodes``/``workflow`` (what a graph may hold), ``images`` (PNGs),
``records``/``state``/``uploads``/``bus`` (resources, the executor, events), ``faults``,
``idempotency`` and ``limits`` (what the gate in front of the routes applies),
``routes``/``ws``/``storage``/``control`` (HTTP), ``v2`` (the Comfy API v2 face on the same state),
``app`` (`create_app`), ``server`` (`EmulatorServer`) and ``cli``.

Names are imported when first used, so that ``prefect-comfy --help`` (which imports ``cli``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_comfy_emulator.app import create_app
    from prefect_comfy_emulator.config import EmulatorConfig
    from prefect_comfy_emulator.server import EmulatorServer

__all__ = ["EmulatorConfig", "EmulatorServer", "create_app"]

_WHERE = {
    "EmulatorConfig": "prefect_comfy_emulator.config",
    "EmulatorServer": "prefect_comfy_emulator.server",
    "create_app": "prefect_comfy_emulator.app",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
