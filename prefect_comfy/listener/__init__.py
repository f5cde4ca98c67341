"""The listener: forwards every Comfy event into Prefect as a Prefect event.

``prefect-comfy listen --block NAME`` runs it; `run_listener` is the same from Python.

Each name is imported on first use (PEP 562, as the package's own face does), so that ``prefect-comfy
listen --help`` does not import Prefect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_comfy import _lazy_exports

if TYPE_CHECKING:  # what type checkers and the API reference see; at run time, __getattr__
    from prefect_comfy.listener.follow import JobFollower
    from prefect_comfy.listener.forwarder import ComfyListener, default_listener_id
    from prefect_comfy.listener.run import run_listener
    from prefect_comfy.listener.sender import NO_API_URL_MESSAGE, require_prefect_api_url
    from prefect_comfy.listener.stats import ListenerStats

_HOMES: dict[str, str] = {
    "JobFollower": "prefect_comfy.listener.follow",
    "ComfyListener": "prefect_comfy.listener.forwarder",
    "default_listener_id": "prefect_comfy.listener.forwarder",
    "run_listener": "prefect_comfy.listener.run",
    "NO_API_URL_MESSAGE": "prefect_comfy.listener.sender",
    "require_prefect_api_url": "prefect_comfy.listener.sender",
    "ListenerStats": "prefect_comfy.listener.stats",
}
"""Where each public name lives: imported from there on first use."""


__getattr__, __dir__ = _lazy_exports(globals(), _HOMES)


__all__ = [
    "NO_API_URL_MESSAGE",
    "ComfyListener",
    "JobFollower",
    "ListenerStats",
    "default_listener_id",
    "require_prefect_api_url",
    "run_listener",
]
