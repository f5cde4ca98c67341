"""The backend that an API key and the ``COMFY_*`` environment describe, without a Prefect block.

What the SDK-style waits (`prefect_comfy.wait_for_job` and friends, which take an
``api_key`` and a ``base_url`` as Comfy's own SDK does) and ``prefect-comfy listen`` without
``--block`` use. Like `prefect_comfy.backends.registry`, it is allowed to name a kind of
server, so nothing above the backends has to: today that kind is the Comfy Cloud developer API.
"""

from __future__ import annotations

from prefect_comfy.backends.base import ComfyBackend

__all__ = ["backend_from_environment"]


def backend_from_environment(
    api_key: str | None = None, base_url: str | None = None
) -> ComfyBackend:
    """A new backend for ``api_key`` at ``base_url`` (each falling back to ``COMFY_API_KEY`` and
    ``COMFY_BASE_URL``): the Comfy Cloud developer API, or the emulator of it.

    Raises:
        ComfyConfigError: no API key, or a bad base URL.
    """
    from prefect_comfy.backends.cloud.backend import CloudBackend

    return CloudBackend(api_key=api_key, base_url=base_url)
