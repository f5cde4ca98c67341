"""The Comfy API v2 credentials block: where the server is (Cloud, a deployment, a proxy) and its key.

Fields left unset fall back, when the block is used, to the environment: ``COMFY_V2_BASE_URL`` (else
``https://cloud.comfy.org``) and ``COMFY_V2_API_KEY`` (else ``COMFY_API_KEY``). ``COMFY_BASE_URL`` is
not read: it names the developer API's origin, a different server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from prefect_comfy.backends.cloud.block import BLOCK_MODEL_CONFIG, StrictFields, is_masked
from prefect_comfy.settings import DOCS_URL, ComfySettings, environment_value

if TYPE_CHECKING:
    from prefect_comfy.backends.v2.backend import V2Backend

__all__ = ["DEFAULT_V2_URL", "ComfyV2Credentials"]

DEFAULT_V2_URL = "https://cloud.comfy.org"


class ComfyV2Credentials(StrictFields, Block):
    """A Comfy API v2 server and its secret key: Comfy Cloud, a serverless deployment, or a proxy.

    ``base_url``, the name comfy-sdk gives it, is taken for ``endpoint``.

    Example:
        Run a workflow through Comfy API v2 with a saved block (``run_comfy_workflow`` is a flow):
        ```python
        from prefect_comfy import ComfyV2Credentials, run_comfy_workflow

        credentials = ComfyV2Credentials.load("BLOCK_NAME")
        result = run_comfy_workflow(credentials, "workflow.json")
        print(result.paths)
        ```
    """

    model_config = BLOCK_MODEL_CONFIG
    _field_aliases: ClassVar[dict[str, str]] = {"base_url": "endpoint"}

    _block_type_name = "Comfy API v2 Credentials"
    _block_type_slug = "comfy-v2-credentials"
    _logo_url = "https://github.com/Comfy-Org.png?size=200"
    _documentation_url = f"{DOCS_URL}backends/#comfy-api-v2-in-detail"
    _description = "A Comfy API v2 server (Comfy Cloud, a serverless deployment, or comfy-api-proxy) and its key."

    endpoint: str | None = Field(
        default=None,
        title="Endpoint",
        description="The v2 server's origin: https://cloud.comfy.org, https://<deployment>.run.comfy.app "
        "or a comfy-api-proxy such as http://127.0.0.1:8189; unset means COMFY_V2_BASE_URL, or "
        "https://cloud.comfy.org.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        title="API key",
        description="The secret key (Bearer); optional for a proxy started without --token; unset "
        "means COMFY_V2_API_KEY, or COMFY_API_KEY.",
    )
    request_timeout: float | None = Field(
        default=None, gt=0, title="Request timeout", description="Seconds for one HTTP request."
    )
    allow_insecure_http: bool = Field(
        default=False,
        title="Allow insecure HTTP",
        description="Send the key over plain http:// to a host that is not this machine (anyone on "
        "the network path can read it); off leaves it to COMFY_ALLOW_INSECURE_HTTP (default no).",
    )

    catalog_source: str | None = Field(
        default=None,
        title="Node catalog source",
        description="For save-format workflows and inputs by name: a ComfyUI URL with the same "
        "nodes (http://127.0.0.1:8188) or the path of a saved object_info JSON file; unset means "
        "COMFY_CATALOG_SOURCE.",
    )

    def resolved(self) -> tuple[str, str | None]:
        """``(origin, key)`` after the environment fallbacks (a masked key counts as unset)."""
        endpoint = self.endpoint or environment_value("COMFY_V2_BASE_URL") or DEFAULT_V2_URL
        key = self.api_key.get_secret_value() if self.api_key is not None else ""
        if not key or is_masked(key):
            key = environment_value("COMFY_V2_API_KEY", "COMFY_API_KEY") or ""
        return endpoint, key or None

    def get_backend(self) -> V2Backend:
        """A new `V2Backend`.

        Raises:
            ComfyConfigError: a bad endpoint, or Comfy Cloud / a deployment without a key.
        """
        from prefect_comfy.backends.v2.backend import V2Backend

        endpoint, key = self.resolved()
        update: dict[str, object] = {}
        if self.request_timeout is not None:
            update["request_timeout"] = self.request_timeout
        if self.allow_insecure_http:
            update["allow_insecure_http"] = True
        settings = ComfySettings(**update) if update else None
        return V2Backend(endpoint, key, settings=settings, catalog_source=self.catalog_source)
