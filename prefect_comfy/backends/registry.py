"""Which Prefect block goes with which kind of Comfy server, said once; and credentials from a name.

A kind of server is a `ComfyBackend` plus the Prefect block
that makes it (its ``get_backend()``). The Prefect layer (tasks, the flow, the job block, the
cancel hook, the listener) imports no backend module: it takes any registered block as
``credentials`` and calls ``get_backend()``. So a new kind of server is one package (its backend
and its block) plus one `register` line below, or a ``register`` call (or decorator) of its
own for a kind that lives outside this package.

- `ComfyCredentials`: the type of every ``credentials`` parameter and field. Its JSON schema
  (the Prefect UI's block picker) lists the kinds registered here; validation accepts a block of
  any kind registered at the time, also one registered later.
- `load_credentials`: a saved block by name, whatever its kind.
- `credentials_from_parameter`: the credentials again from what a flow run's parameters hold.
- `open_backend` / `backend_of`: the backend of a block (or a backend given as it is).

Example:
    >>> from prefect_comfy.backends.registry import block_types
    >>> [t.__name__ for t in block_types()][:2]
    ['ComfyCloudCredentials', 'ComfyUIServer']
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator
from typing import Annotated, Any, Union

from prefect.blocks.core import Block
from pydantic import ValidatorFunctionWrapHandler, WrapValidator

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.backends.cloud.block import ComfyCloudCredentials
from prefect_comfy.backends.comfyui.block import ComfyUIServer
from prefect_comfy.backends.v2.block import ComfyV2Credentials
from prefect_comfy.exceptions import ComfyConfigError

__all__ = [
    "ComfyCredentials",
    "backend_of",
    "block_types",
    "credentials_from_parameter",
    "load_credentials",
    "open_backend",
    "register",
]

_BLOCK_TYPES: list[type[Block]] = []


def register(block_type: type[Block]) -> type[Block]:
    """Make a block type a kind of Comfy server; returns it, so it also works as a class decorator.

    Args:
        block_type: a Prefect block class whose ``get_backend()`` returns a new
            `ComfyBackend` (sync, or awaitable).

    Raises:
        TypeError: not a block class with ``get_backend()``.
    """
    if not (isinstance(block_type, type) and issubclass(block_type, Block)):
        raise TypeError(f"a kind of Comfy server is a Prefect Block class, not {block_type!r}")
    if not callable(getattr(block_type, "get_backend", None)):
        raise TypeError(f"{block_type.__name__} has no get_backend() to make its ComfyBackend")
    if block_type not in _BLOCK_TYPES:
        _BLOCK_TYPES.append(block_type)
    return block_type


# The kinds of server this package ships: one line each.
register(ComfyCloudCredentials)  # the Comfy Cloud developer API (and the local emulator)
register(ComfyUIServer)  # a self-hosted ComfyUI (or Comfy Cloud's ComfyUI-compatible API)
register(ComfyV2Credentials)  # Comfy API v2: Comfy Cloud, serverless deployments, comfy-api-proxy


def block_types() -> tuple[type[Block], ...]:
    """The registered block types, in the order they were registered."""
    return tuple(_BLOCK_TYPES)


def _kind_names() -> str:
    return " or ".join(t.__name__ for t in _BLOCK_TYPES)


def _by_slug(slug: Any) -> type[Block] | None:
    return next((t for t in _BLOCK_TYPES if t.get_block_type_slug() == slug), None)


def _any_registered(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    if isinstance(value, tuple(_BLOCK_TYPES)):
        return value
    if isinstance(value, dict) and "$ref" not in value:
        # By slug, else by field names: a plain union would let ComfyCloudCredentials (which
        # allows extra fields) swallow a ComfyUIServer's {"url": ...}.
        return _kind_of_fields(value).model_validate(value)
    return handler(value)


ComfyCredentials = Annotated[
    Union[tuple(_BLOCK_TYPES)],  # type: ignore[valid-type]  # noqa: UP007 - built from the registry
    WrapValidator(_any_registered),
]
"""What the Prefect layer takes as credentials: a block of any registered kind.

Choosing the block chooses the backend: `ComfyCloudCredentials` for the developer API,
`ComfyUIServer` for a self-hosted ComfyUI, or a kind registered with `register`.
"""


async def load_credentials(name: str) -> Block:
    """Load a saved credentials block by name: any registered kind, so a name alone chooses the backend.

    ``"<block type slug>/<name>"`` loads that type; a bare name is tried as each registered kind in
    turn (`ComfyCloudCredentials` first, then `ComfyUIServer`, then any other).

    Raises:
        ValueError: no block of a registered kind has that name (the message names the kinds).
    """
    if "/" in name:
        slug, _, bare = name.partition("/")
        kind = _by_slug(slug)
        if kind is None:
            raise ValueError(
                f"{slug!r} is not a kind of Comfy server; use one of "
                + ", ".join(repr(t.get_block_type_slug()) for t in _BLOCK_TYPES)
            )
        return await kind.aload(bare)
    for kind in _BLOCK_TYPES:
        try:
            return await kind.aload(name)
        except ValueError:
            continue
    raise ValueError(f"No saved {_kind_names()} block is named {name!r}")


def _kind_of_fields(fields: dict[str, Any]) -> type[Block]:
    """The kind whose fields a dict of saved fields is: by ``block_type_slug``, else by its keys."""
    kind = _by_slug(fields.get("block_type_slug"))
    if kind is not None:
        return kind
    keys = {k for k, v in fields.items() if v is not None and not k.startswith("_")}
    fitting = [t for t in _BLOCK_TYPES if keys <= set(t.model_fields)]
    # The closest fit: a kind whose fields cover the keys with the fewest left over.
    fitting.sort(key=lambda t: len(set(t.model_fields) - keys))
    return fitting[0] if fitting else _BLOCK_TYPES[0]


async def credentials_from_parameter(value: Any) -> Block:
    """Credentials rebuilt from what a flow run's ``parameters`` hold for them.

    - a block: itself;
    - ``{"$ref": {"block_document_id": ...}}``: a saved block passed to a deployment (what the UI
      and ``serve(parameters=...)`` store): loaded from the Prefect API, key included;
    - a block's fields (a flow called directly with a block): the API key is stored masked, so it
      comes from the environment (``COMFY_API_KEY``) of the process that runs this; the kind is
      the one whose fields they are (``url`` and no ``base_url``: a `ComfyUIServer`);
    - a string: the name of a saved block (see `load_credentials`);
    - nothing: the ``COMFY_*`` environment (a `ComfyCloudCredentials` with no fields).
    """
    if isinstance(value, Block):
        return value
    if isinstance(value, dict) and "$ref" in value:
        return await Block.aload_from_ref(value["$ref"])
    if isinstance(value, dict):
        kind = _kind_of_fields(value)
        fields = {k: v for k, v in value.items() if k in kind.model_fields}
        return kind.model_validate(fields)
    if isinstance(value, str) and value:
        return await load_credentials(value)
    return ComfyCloudCredentials()


async def open_backend(credentials: Any) -> tuple[ComfyBackend, bool]:
    """The backend of a credentials block, and whether the caller owns it (then closes it after).

    A `ComfyBackend` given as it is comes back as it is, not
    owned.

    Raises:
        ComfyConfigError: neither a backend nor a block with ``get_backend()``.
    """
    if isinstance(credentials, ComfyBackend):
        return credentials, False
    get_backend = getattr(credentials, "get_backend", None)
    if get_backend is None:
        raise ComfyConfigError(
            "expected a ComfyBackend or a credentials block with get_backend() ("
            f"{_kind_names()}), got {type(credentials).__name__}"
        )
    backend = get_backend()
    if inspect.isawaitable(backend):
        backend = await backend
    return backend, True


@contextlib.asynccontextmanager
async def backend_of(credentials: Any) -> AsyncIterator[ComfyBackend]:
    """``async with backend_of(credentials) as backend``: closed after if made here (see `open_backend`)."""
    backend, owned = await open_backend(credentials)
    try:
        yield backend
    finally:
        if owned:
            await backend.aclose()
