"""Small API-format graphs for a real ComfyUI (no model weights), and reading back what Prefect stored."""

from __future__ import annotations

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def empty_to_save(width: int = 64, color: int = 0, prefix: str = "ok") -> dict:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": 64, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def long_graph(size: int = 1280, blurs: int = 2) -> dict:
    """EmptyImage → ImageBlur(31, 10) × blurs → SaveImage: about 1.8 s per blur on 2 idle cores."""
    graph: dict = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": 0x336699},
        }
    }
    previous = "1"
    for i in range(blurs):
        node = str(10 + i)
        graph[node] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [previous, 0], "blur_radius": 31, "sigma": 10.0},
        }
        previous = node
    graph["2"] = {
        "class_type": "SaveImage",
        "inputs": {"images": [previous, 0], "filename_prefix": "long"},
    }
    return graph


async def stored_events(job_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventResourceFilter

    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(resource=EventResourceFilter(id=[f"comfy.job.{job_id}"])), limit=50
        )
    return page.events


async def _when(awaitable, condition):
    value = await awaitable
    return value if condition(value) else None
