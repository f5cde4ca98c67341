"""The credentials block: an API key and where to reach Comfy Cloud, saved in Prefect.

A field left unset falls back, when the block is used, to the ``COMFY_*`` environment
(`ComfySettings`), so one block can serve machines with different
environments, and a block with no fields at all is "whatever the environment says".
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from prefect.blocks.abstract import CredentialsBlock
from prefect.blocks.core import Block
from prefect.blocks.core import schema_extra as block_schema_extra
from pydantic import ConfigDict, Field, SecretStr, model_validator

from prefect_comfy.settings import DOCS_URL, ComfySettings

if TYPE_CHECKING:
    from prefect_comfy.backends.cloud.backend import CloudBackend
    from prefect_comfy.backends.cloud.rest import ComfyClient

__all__ = ["ComfyCloudCredentials", "StrictFields"]


def is_masked(value: str) -> bool:
    """Whether a secret reads as stars: serialized without secrets (``**********``, ``********``)."""
    return bool(value) and set(value) == {"*"}


_NEVER = "$ref is not a block document"
"""A property name no document has (see `deployment_parameter_schema`). Printable: PostgreSQL's
JSONB refuses a ``\\u0000`` in a block schema, so a NUL here made the block unregistrable there."""


def deployment_parameter_schema(schema: dict[str, Any], model: type[Block]) -> None:
    """Block schema that lets a saved block (``{"$ref": ...}``) be a deployment parameter."""
    block_schema_extra(schema, model)
    # Every field is optional, so a saved block passed to a deployment ({"$ref": ...}) would also
    # validate as a block document, and Prefect's parameter check ("oneOf" the block or a $ref)
    # refuses it. Refuse a "$ref" here the way a required field does: Prefect strips every
    # "required" where it accepts partial values, and then this rule accepts everything.
    schema["if"] = {"required": ["$ref"]}
    schema["then"] = {"required": [_NEVER]}


BLOCK_MODEL_CONFIG = ConfigDict(
    extra="allow",  # Prefect's own keys (block_type_slug ...) pass; check_fields refuses the rest
    hide_input_in_errors=True,  # a validation error would otherwise print every field, the key too
    json_schema_extra=deployment_parameter_schema,
)
"""The model settings of every credentials block."""


class StrictFields:
    """A block mixin: unknown fields are refused, naming the closest right one, and aliases are taken.

    Pydantic's ``extra="allow"`` (Prefect's default for blocks) kept a misspelt field silently:
    ``ComfyUIServer(urll=...)`` targeted 127.0.0.1:8188. A ``None`` for a ``bool`` field (what blocks
    saved before the field had a real default hold) is read as the default.
    """

    _field_aliases: ClassVar[dict[str, str]] = {}
    """Other names a field is given under (comfy-sdk's ``base_url`` for the v2 block's ``endpoint``)."""

    @model_validator(mode="before")
    @classmethod
    def check_fields(cls, data: Any) -> Any:
        """Refuses unknown fields with a one-line "did you mean" error, and maps aliases."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        fields = cls.model_fields  # type: ignore[attr-defined]
        for alias, name in cls._field_aliases.items():
            if alias in data:
                if data.get(name) is not None:
                    raise ValueError(f"{alias} and {name} are the same field; give only {name}")
                data[name] = data.pop(alias)
        for name, value in list(data.items()):
            if value is None and name in fields and fields[name].annotation is bool:
                del data[name]
        unknown = [n for n in data if n not in fields and n != "block_type_slug"]
        if unknown:
            known = sorted([*fields, *cls._field_aliases])
            name = unknown[0]
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"the fields are: {', '.join(known)}"
            raise ValueError(f"{cls.__name__} has no field {name!r}; {hint}")
        return data


class ComfyCloudCredentials(StrictFields, CredentialsBlock):
    """An API key for Comfy Cloud's developer API, and where to reach it.

    Fields left unset fall back to the ``COMFY_*`` environment variables when the block is used.

    Example:
        Run a workflow on Comfy Cloud with a saved block (``run_comfy_workflow`` is a flow):
        ```python
        from prefect_comfy import ComfyCloudCredentials, run_comfy_workflow

        credentials = ComfyCloudCredentials.load("BLOCK_NAME")
        result = run_comfy_workflow(credentials, "workflow.json")
        print(result.paths)
        ```
    """

    model_config = BLOCK_MODEL_CONFIG

    _block_type_name = "Comfy Cloud Credentials"
    _block_type_slug = "comfy-cloud-credentials"
    _logo_url = "https://github.com/Comfy-Org.png?size=200"
    _documentation_url = f"{DOCS_URL}blocks/#comfycloudcredentials"
    _description = "An API key for Comfy Cloud (ComfyUI in the cloud), and where to reach it."

    api_key: SecretStr | None = Field(
        default=None,
        title="API key",
        description="The Comfy API key (comfyui-...); unset means the COMFY_API_KEY variable.",
    )
    base_url: str | None = Field(
        default=None,
        title="Base URL",
        description="Origin of the developer API, such as https://cloud.comfy.org; unset means "
        "COMFY_BASE_URL, or https://cloud.comfy.org.",
    )
    ws_auth: Literal["header", "query"] | None = Field(
        default=None,
        title="WebSocket authentication",
        description="How the event stream's handshake carries the key: an Authorization header or "
        "the api_key query parameter; unset means COMFY_WS_AUTH, or header.",
    )
    request_timeout: float | None = Field(
        default=None,
        gt=0,
        title="Request timeout",
        description="Seconds for one HTTP request; unset means COMFY_REQUEST_TIMEOUT, or 30.",
    )

    allow_insecure_http: bool = Field(
        default=False,
        title="Allow insecure HTTP",
        description="Send the API key over plain http:// to a host that is not this machine (anyone "
        "on the network path can read it); off leaves it to COMFY_ALLOW_INSECURE_HTTP (default no).",
    )

    catalog_source: str | None = Field(
        default=None,
        title="Node catalog source",
        description="For save-format workflows and inputs by name: a ComfyUI URL with the same "
        "nodes (http://127.0.0.1:8188) or the path of a saved object_info JSON file; unset means "
        "COMFY_CATALOG_SOURCE.",
    )

    def get_settings(self) -> ComfySettings:
        """The effective settings: this block's fields over the ``COMFY_*`` environment."""
        update: dict[str, object] = {}
        key = self.api_key.get_secret_value() if self.api_key is not None else ""
        if key and not is_masked(key):
            update["api_key"] = self.api_key
        if self.base_url:
            update["base_url"] = self.base_url
        if self.ws_auth is not None:
            update["ws_auth"] = self.ws_auth
        if self.request_timeout is not None:
            update["request_timeout"] = self.request_timeout
        if self.allow_insecure_http:
            update["allow_insecure_http"] = True
        if self.catalog_source:
            update["catalog_source"] = self.catalog_source
        return ComfySettings(**update)

    def get_client(self) -> ComfyClient:
        """A new REST client (`ComfyClient`); close it after use.

        Raises:
            ComfyConfigError: no API key here nor in ``COMFY_API_KEY``, or a bad base URL.
        """
        from prefect_comfy.backends.cloud.rest import ComfyClient

        return ComfyClient(settings=self.get_settings())

    def get_backend(self) -> CloudBackend:
        """A new `CloudBackend`; use it as an async context manager.

        Raises:
            ComfyConfigError: no API key here nor in ``COMFY_API_KEY``, or a bad base URL.
        """
        from prefect_comfy.backends.cloud.backend import CloudBackend

        settings = self.get_settings()
        return CloudBackend(settings=settings, ws_auth=settings.ws_auth)
