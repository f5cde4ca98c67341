"""Backends without a Prefect block: from an API key and the ``COMFY_*`` environment, or from a URL.

- `backend_from_environment`: what the SDK-style waits (`prefect_comfy.wait_for_job` and friends,
  which take an ``api_key`` and a ``base_url`` as Comfy's own SDK does) and ``prefect-comfy listen``
  without ``--block`` use: today the Comfy Cloud developer API (or its emulator).
- `URL_KINDS` and `backend_class`: the kinds a bare URL can be (``prefect-comfy --url URL [--kind
  KIND]``), with their block and the block's URL field, in the order a server is asked what it is.

Like `prefect_comfy.backends.registry`, this module may name the kinds of server, so that nothing
above the backends has to.
"""

from __future__ import annotations

from prefect_comfy.backends.base import ComfyBackend

__all__ = ["URL_KINDS", "backend_class", "backend_from_environment"]

URL_KINDS: dict[str, tuple[str, str, str]] = {
    "cloud": (
        "prefect_comfy.backends.cloud.backend:CloudBackend",
        "ComfyCloudCredentials",
        "base_url",
    ),
    "v2": ("prefect_comfy.backends.v2.backend:V2Backend", "ComfyV2Credentials", "endpoint"),
    "comfyui": ("prefect_comfy.backends.comfyui.backend:ComfyUIBackend", "ComfyUIServer", "url"),
}
"""``--kind`` name -> (backend class, block class, the block's field for the URL), in the order
``--url`` asks a server what it is (the emulator answers the first two: it is taken as ``cloud``)."""


def backend_class(kind: str) -> type[ComfyBackend]:
    """The backend class of a kind that ``URL_KINDS`` names (imported only when asked for)."""
    import importlib

    module, name = URL_KINDS[kind][0].split(":")
    return getattr(importlib.import_module(module), name)


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
