"""The one poll of the ComfyUI backend: model files, which ComfyUI announces with no event.

While a model wait is pending (a ``get_model`` answered "not there yet" and put a watch in the
`ServerMemory`), the stream lists
``/api/models/{folder}`` every ``interval`` seconds and emits ``model.ready`` when the file appears.
One listing per folder per round, however many watches share it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prefect_comfy.backends.comfyui.http import ComfyUIHttp
from prefect_comfy.backends.comfyui.memory import ServerMemory
from prefect_comfy.exceptions import ComfyError, NotFound
from prefect_comfy.models import ComfyEvent

__all__ = ["poll_models"]

logger = logging.getLogger(__name__)


async def poll_models(
    http: ComfyUIHttp,
    memory: ServerMemory,
    emit: Callable[[ComfyEvent], None],
    *,
    interval: float,
) -> None:
    """List the watched model folders every ``interval`` seconds until no watch is left.

    Args:
        http: the server's REST side.
        memory: holds the model watches (a found model's watch is removed).
        emit: takes each ``model.ready`` event.
        interval: seconds between two rounds.
    """
    while True:
        watches = memory.current_watches()
        if not watches:
            return
        listings: dict[str, set[str] | None] = {}
        for model_id, (folder, filename, type_, _) in watches.items():
            if folder not in listings:
                try:
                    listings[folder] = set(await http.model_files(folder))
                except NotFound:
                    listings[folder] = set()
                except ComfyError as exc:
                    logger.debug("could not list ComfyUI models/%s: %s", folder, exc)
                    listings[folder] = None
            files = listings[folder]
            if files is not None and filename in files:
                memory.unwatch_model(model_id)
                payload = {"id": model_id, "name": filename, "status": "ready"}
                if type_:
                    payload["type"] = type_
                emit(ComfyEvent(event="model.ready", payload=payload))
        await asyncio.sleep(interval)
