"""What converting a save-format workflow to API format costs (``prefect_comfy.to_api_format``).

Two graphs: a synthetic one of 10,000 nodes (reroutes, primitives, bypassed and muted nodes; see
``tests/support/save_format.py``), and the largest official template of
``comfyui-workflow-templates`` 0.7.25 whose node types ComfyUI 0.3.75 all knows (read from the
cached wheels; skipped if they are absent).
Each time is the best of ``--repeat`` runs, with a catalog built once (as a process does) and
with a fresh one. The baseline, measured in the same run, is ``json.loads`` of the same file: a
conversion costs a few parses of the workflow it converts.

    .venv/bin/python benchmarks/bench_convert.py [--units 1250] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefect_comfy.exceptions import UnknownNodeType  # noqa: E402
from prefect_comfy.workflows.catalog import NodeCatalog  # noqa: E402
from prefect_comfy.workflows.convert import convert_workflow, is_save_format  # noqa: E402
from tests.support.save_format import UNIT_NODES, large_workflow  # noqa: E402

OBJECT_INFO = ROOT / "tests" / "fixtures" / "object_info" / "comfyui-0.3.75.json"


def best_ms(call: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """The best wall-clock and the best CPU time of ``repeat`` calls, in milliseconds.

    On a shared machine the CPU time (``time.process_time``) is the steadier of the two.
    """
    call()  # warm up
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall) * 1e3, min(cpu) * 1e3


def largest_template(catalog: NodeCatalog) -> tuple[str, dict[str, Any]] | None:
    """The largest save-format template whose node types the catalog all knows."""
    try:
        from tests.support.workflow_templates import iter_templates
    except ImportError:
        return None
    try:
        found = [(len(t.data), t.id, t.load()) for t in iter_templates()]
    except Exception as exc:  # the wheels are not cached and cannot be downloaded
        print(f"(templates unavailable: {exc})")
        return None
    for _size, name, workflow in sorted(found, key=lambda f: (f[0], f[1]), reverse=True):
        if not is_save_format(workflow):
            continue
        try:
            convert_workflow(workflow, catalog)
        except UnknownNodeType:
            continue
        return name, workflow
    return None


def report(label: str, workflow: dict[str, Any], object_info: dict[str, Any], repeat: int) -> None:
    text = json.dumps(workflow)
    catalog = NodeCatalog(object_info)
    baseline = best_ms(lambda: json.loads(text), repeat)
    warm = best_ms(lambda: convert_workflow(workflow, catalog), repeat)
    cold = best_ms(lambda: convert_workflow(workflow, NodeCatalog(object_info)), repeat)
    nodes = len(workflow["nodes"])
    print(f"{label} ({nodes} nodes, {len(text) / 1e6:.2f} MB)          wall            cpu")
    for name, (wall, cpu) in (
        ("baseline: json.loads of the same file", baseline),
        ("convert, catalog reused", warm),
        ("convert, fresh catalog", cold),
    ):
        print(
            f"  {name:40s} {wall:9.2f} ms (x{wall / baseline[0]:.2f})"
            f" {cpu:9.2f} ms (x{cpu / baseline[1]:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=10_000 // UNIT_NODES)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    object_info = json.loads(OBJECT_INFO.read_text())
    report("synthetic graph", large_workflow(args.units), object_info, args.repeat)
    template = largest_template(NodeCatalog(object_info))
    if template is None:
        print(
            "largest template: skipped (tests/support/workflow_templates.py or its wheels absent)"
        )
    else:
        name, workflow = template
        report(f"largest template: {name}", workflow, object_info, args.repeat)


if __name__ == "__main__":
    main()
