"""The listener: forwards every Comfy event into Prefect as a Prefect event.

``prefect-comfy listen --block NAME`` runs it; `run_listener` is the same from Python.
"""

from prefect_comfy.listener.follow import JobFollower
from prefect_comfy.listener.forwarder import ComfyListener, default_listener_id
from prefect_comfy.listener.run import run_listener
from prefect_comfy.listener.sender import NO_API_URL_MESSAGE, require_prefect_api_url
from prefect_comfy.listener.stats import ListenerStats

__all__ = [
    "NO_API_URL_MESSAGE",
    "ComfyListener",
    "JobFollower",
    "ListenerStats",
    "default_listener_id",
    "require_prefect_api_url",
    "run_listener",
]
