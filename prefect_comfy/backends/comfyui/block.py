"""The ComfyUI server block: where a self-hosted ComfyUI (or Comfy Cloud's ComfyUI-compatible API) is.

Pass it wherever the Prefect layer takes credentials (``run_comfy_workflow``, the tasks, the
listener): they only call `ComfyUIServer.get_backend`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from prefect_comfy.backends.cloud.block import BLOCK_MODEL_CONFIG, StrictFields
from prefect_comfy.settings import DOCS_URL, ComfySettings

if TYPE_CHECKING:
    from prefect_comfy.backends.comfyui.backend import ComfyUIBackend

__all__ = ["ComfyUIServer"]


class ComfyUIServer(StrictFields, Block):
    """A ComfyUI server: a self-hosted ComfyUI, or Comfy Cloud's ComfyUI-compatible API with a key.

    Example:
        Run a workflow on a saved ComfyUI server (``run_comfy_workflow`` is a flow):
        ```python
        from prefect_comfy import ComfyUIServer, run_comfy_workflow

        server = ComfyUIServer.load("BLOCK_NAME")
        result = run_comfy_workflow(server, "workflow.json")
        print(result.paths)
        ```
    """

    model_config = BLOCK_MODEL_CONFIG

    _block_type_name = "ComfyUI Server"
    _block_type_slug = "comfyui-server"
    _logo_url = "https://github.com/comfyanonymous.png?size=200"
    _documentation_url = f"{DOCS_URL}comfyui/#using-it"
    _description = "A self-hosted ComfyUI server (or Comfy Cloud's ComfyUI-compatible API)."

    url: str = Field(
        default="http://127.0.0.1:8188",
        title="URL",
        description="The server's origin, such as http://127.0.0.1:8188 or https://cloud.comfy.org.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        title="API key",
        description="An API key for Comfy Cloud's ComfyUI-compatible API; leave empty for a "
        "self-hosted ComfyUI.",
    )

    allow_insecure_http: bool = Field(
        default=False,
        title="Allow insecure HTTP",
        description="Send the API key over plain http:// to a host that is not this machine (anyone "
        "on the network path can read it); off leaves it to COMFY_ALLOW_INSECURE_HTTP (default no).",
    )

    def get_backend(self) -> ComfyUIBackend:
        """A `ComfyUIBackend` for this server."""
        from prefect_comfy.backends.comfyui.backend import ComfyUIBackend

        key = self.api_key.get_secret_value() if self.api_key is not None else None
        if key and set(key) == {"*"}:  # serialized without secrets: no usable key
            key = None
        settings = None  # read from the environment on first use
        if self.allow_insecure_http:
            settings = ComfySettings(allow_insecure_http=True)
        return ComfyUIBackend(self.url, key, settings=settings)
