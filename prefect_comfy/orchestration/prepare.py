"""From what a user gives to the graph a server runs: read, convert, set inputs, draw seeds.

`prepare_workflow` is the one path every door takes (the flow, the job block, the tasks,
``prefect-comfy run`` and ``validate``), before any request that submits:

1. `load_workflow` reads the workflow (API format, save format, or
   a PNG ComfyUI saved);
2. a save-format workflow is converted against the server's node catalog
   (`node_catalog`, cached per server and process);
3. widgets marked ``randomize`` get fresh seeds (`draw_seeds`);
4. the inputs given by name are set and checked against the catalog
   (`apply_inputs`): an explicit input wins over randomize.

A catalog served from the cache that the workflow does not fit (a node type it lacks, a choice it
does not list) is read again once before the error is raised: the server may have gained the
node or the model since.
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect_comfy.backends.base import ComfyBackend
from prefect_comfy.exceptions import CatalogUnavailable, InvalidInputs, UnknownNodeType
from prefect_comfy.workflows.catalog import NodeCatalog
from prefect_comfy.workflows.convert import convert_workflow, is_save_format
from prefect_comfy.workflows.inputs import apply_inputs, draw_seeds, seeds_of
from prefect_comfy.workflows.load import load_workflow

__all__ = ["PreparedWorkflow", "prepare_workflow"]

SAVE_FORMAT_HINT = (
    "or export the workflow in API format ('Save (API format)' in ComfyUI), which needs no catalog"
)


@dataclass(frozen=True)
class PreparedWorkflow:
    """A workflow ready to submit.

    Attributes:
        graph: the API-format graph to submit.
        seeds: the seeds it runs with, ``{"<node id>.<input>": value}``.
        converted: whether it came in save format.
        catalog_cached: whether a catalog from the cache (not read just now) was used.
        controls: the save format's seed controls, ``(node id, input) -> control``.
        seed_key: what the seeds were drawn from (preparing again with it draws the same).
    """

    graph: dict[str, Any]
    seeds: dict[str, int] = field(default_factory=dict)
    converted: bool = False
    catalog_cached: bool = False
    controls: dict[tuple[str, str], str] = field(default_factory=dict)
    seed_key: str = ""


def _needs_catalog(backend: ComfyBackend) -> bool:
    """Whether a catalog exists for this server: it serves one, or a source is configured."""
    return backend.capabilities.node_catalog or bool(backend.catalog_source)


async def _catalog(
    backend: ComfyBackend, *, save_format: bool, refresh: bool
) -> tuple[NodeCatalog | None, bool]:
    if not save_format and not _needs_catalog(backend):
        return None, False  # inputs on an API graph, no catalog anywhere: checked by value type
    try:
        return await backend.node_catalog(refresh=refresh)
    except CatalogUnavailable as exc:
        if save_format:
            raise CatalogUnavailable(
                f"This workflow is in the editor's save format, which is converted with the "
                f"server's node catalog. {exc} ({SAVE_FORMAT_HINT})"
            ) from exc
        raise


async def prepare_workflow(
    backend: ComfyBackend,
    workflow: Mapping[str, Any] | str | os.PathLike[str],
    inputs: Mapping[str, Any] | None = None,
    *,
    seed_key: str | None = None,
    refresh: bool = False,
) -> PreparedWorkflow:
    """The API-format graph to submit for a workflow, its named inputs set, its seeds drawn.

    Args:
        backend: the server the graph is for (its node catalog, when one is needed).
        workflow: an API-format graph, a save-format workflow, JSON text, or the path of a JSON
            file or of a PNG ComfyUI saved.
        inputs: ``{"<node>.<input>": value}``; see `prefect_comfy.workflows.inputs`.
        seed_key: draws the same seeds for the same key (a Prefect retry of one submit); fresh
            ones (from a random key) when ``None``.
        refresh: read the catalog again even if cached.

    Raises:
        InvalidWorkflow: not a workflow, or it does not convert (`UnknownNodeType` names
            the node, its title and the server).
        InvalidInputs: a name is unknown or ambiguous, or a value does not fit.
        CatalogUnavailable: a catalog is needed and cannot be had.
    """
    seed_key = seed_key or secrets.token_hex(16)
    loaded = load_workflow(workflow)
    save_format = is_save_format(loaded)
    catalog, fresh = None, False
    if save_format or inputs:
        catalog, fresh = await _catalog(backend, save_format=save_format, refresh=refresh)
    cached = catalog is not None and not fresh
    try:
        if save_format:
            assert catalog is not None
            converted = convert_workflow(loaded, catalog)
            graph, controls = converted.graph, dict(converted.controls)
        else:
            graph, controls = loaded, {}
        draw_seeds(graph, controls, catalog=catalog, rng=random.Random(seed_key))
        graph = apply_inputs(graph, inputs, catalog)
    except UnknownNodeType as exc:
        if cached:  # the server may have gained the node since the catalog was read
            return await prepare_workflow(
                backend, workflow, inputs, seed_key=seed_key, refresh=True
            )
        raise UnknownNodeType(
            exc.node_id,
            exc.class_type,
            exc.title,
            message=f"{exc} (the server is {backend.address})",
        ) from None
    except InvalidInputs:
        if cached:  # a choice (a model file) the server may have gained since
            return await prepare_workflow(
                backend, workflow, inputs, seed_key=seed_key, refresh=True
            )
        raise
    return PreparedWorkflow(
        graph=graph,
        seeds=seeds_of(graph, controls),
        converted=save_format,
        catalog_cached=cached,
        controls=controls,
        seed_key=seed_key,
    )
