"""The node catalog of a server, read once per server and process, and where it comes from.

A save-format workflow is converted, and inputs given by name are checked, against the catalog of
the server that will run them (what ComfyUI's ``GET /object_info`` returns):

- a kind whose server serves it (``capabilities.node_catalog``: ComfyUI, Comfy Cloud's
  ComfyUI-compatible API) asks the server;
- a kind without a catalog route (the developer API, Comfy API v2) reads the block's
  ``catalog_source``: a ComfyUI URL (``http://127.0.0.1:8188``; its ``/api/object_info`` is read,
  no key is sent) or the path of a saved ``object_info`` JSON file.

`node_catalog` caches each server's catalog in a `Bounded`
keyed by the backend's ``connection_key`` (and its catalog source); ``refresh=True`` reads it again,
which the caller does once when the catalog looks stale (see
`prefect_comfy.orchestration.job_steps.prepare_workflow`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prefect_comfy.bounded import Bounded
from prefect_comfy.exceptions import CatalogUnavailable, ComfyError
from prefect_comfy.redaction import redact_url
from prefect_comfy.settings import ComfySettings
from prefect_comfy.workflows.catalog import NodeCatalog

__all__ = ["CATALOG_HINT", "MAX_CATALOG_BYTES", "node_catalog", "read_catalog_source"]

logger = logging.getLogger(__name__)

MAX_CATALOG_BYTES = 256 * 2**20
"""The largest catalog file read (a ComfyUI with many custom nodes serves tens of MB)."""

CATALOG_HINT = (
    "set catalog_source on the credentials block (or COMFY_CATALOG_SOURCE) to a ComfyUI URL "
    "with the same nodes, such as http://127.0.0.1:8188, or to a saved catalog file "
    "(curl http://127.0.0.1:8188/object_info > object_info.json)"
)
"""What to do when a kind of server without a catalog route has no catalog source."""

_CACHE: Bounded = Bounded(64)
"""``connection_key|catalog_source`` -> `NodeCatalog`, one per server and process."""


def _cache_key(backend: Any) -> str:
    return f"{backend.connection_key}|{backend.catalog_source or ''}"


async def node_catalog(backend: Any, *, refresh: bool = False) -> tuple[NodeCatalog, bool]:
    """The server's node catalog, and whether it was read just now (``False``: from the cache).

    Args:
        backend: the server (a `ComfyBackend`; not imported
            here: the interface calls this module).
        refresh: read it again even if cached (a stale catalog: the server gained or lost a node).

    Raises:
        CatalogUnavailable: no catalog source for a kind without a catalog route, or the catalog
            could not be read (the message names the server and the cause).
    """
    key = _cache_key(backend)
    cached = None if refresh else _CACHE.get(key)
    if cached is not None:
        return cached, False
    try:
        raw = await backend.object_info()
    except CatalogUnavailable:
        raise
    except ComfyError as exc:
        raise CatalogUnavailable(
            f"Could not read the node catalog of {backend.address} ({backend.kind}): {exc}; "
            "nothing was submitted"
        ) from exc
    catalog = NodeCatalog(_checked(raw, backend.address))
    _CACHE.remember(key, catalog)
    logger.info("Read the node catalog of %s: %d node types", backend.address, len(catalog))
    return catalog, True


def forget_catalogs() -> None:
    """Drop every cached catalog (tests, or after installing nodes)."""
    _CACHE.clear()


def _checked(raw: Any, source: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, dict) for v in raw.values()):
        raise CatalogUnavailable(
            f"{source} did not give a node catalog (a JSON object of node types, as ComfyUI's "
            "/object_info returns)"
        )
    return raw


async def read_catalog_source(source: str | None, *, kind: str, server: str) -> dict[str, Any]:
    """The catalog from a catalog source: a ComfyUI URL or the path of a saved JSON file.

    Args:
        source: the URL or path; ``None`` or empty says there is none.
        kind: the kind of server that needs it (for the message).
        server: its address (for the message).

    Raises:
        CatalogUnavailable: no source (the message says what to set), or it cannot be read.
    """
    if not source:
        raise CatalogUnavailable(
            f"The {kind} server {server} serves no node catalog, and one is needed to convert a "
            f"save-format workflow or check inputs by name: {CATALOG_HINT}"
        )
    if source.startswith(("http://", "https://")):
        return _checked(await _read_url(source), redact_url(source))
    return _checked(_read_file(Path(source).expanduser()), source)


def catalog_route(url: str) -> tuple[str, str]:
    """``(origin, path)`` of the catalog at a ComfyUI URL.

    Example:
        >>> catalog_route("https://cloud.comfy.org/api")
        ('https://cloud.comfy.org', '/api/object_info')
        >>> catalog_route("http://127.0.0.1:8188")
        ('http://127.0.0.1:8188', '/api/object_info')
    """
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith("/object_info"):
        path = path + ("/object_info" if path.endswith("/api") else "/api/object_info")
    return f"{parts.scheme}://{parts.netloc}", path


async def _read_url(url: str) -> Any:
    from prefect_comfy.backends.comfyui.http import ComfyUIHttp

    origin, path = catalog_route(url)
    # no key travels to a catalog source; one quick try: an unreachable catalog fails fast
    settings = ComfySettings(max_retries=0, max_response_bytes=MAX_CATALOG_BYTES)
    try:
        async with ComfyUIHttp(origin, None, settings) as http:
            return await http.json("GET", path)
    except ComfyError as exc:
        raise CatalogUnavailable(
            f"Could not read the node catalog at {redact_url(origin + path)}: {exc}; check that "
            "the catalog source is a running ComfyUI (nothing was submitted)"
        ) from exc


def _read_file(path: Path) -> Any:
    if not path.is_file():
        raise CatalogUnavailable(
            f"No catalog file at {str(path)!r}: the catalog source must be a ComfyUI URL "
            "(http://...) or a saved object_info JSON file"
        )
    size = path.stat().st_size
    if size > MAX_CATALOG_BYTES:
        raise CatalogUnavailable(
            f"The catalog file {path} is {size} bytes, over the {MAX_CATALOG_BYTES} read"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CatalogUnavailable(f"The catalog file {path} is not UTF-8 JSON: {exc}") from None
