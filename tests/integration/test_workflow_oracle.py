"""``to_api_format`` measured against the real ComfyUI frontend (the oracle).

The expected API graphs were made by the frontend of ComfyUI 0.3.75 (``app.loadGraphData`` then
``app.graphToPrompt()`` in headless Chromium) with ``scripts/workflow_oracle.py``; see that script for
how to regenerate them. Fixtures:

- ``tests/fixtures/workflows/cases/``: hand-made hard cases (save format, made by the editor) and
  their expected graphs: every one must match.
- ``tests/fixtures/workflows/templates/``: the expected graphs of the official templates
  (``comfyui-workflow-templates`` 0.7.25). The templates are not committed: they are read from their
  wheels, downloaded once into the cache (the test skips only when that download fails). Over the
  templates whose node types the server knows, at least 98 % must match.
- ``tests/fixtures/object_info/comfyui-0.3.75.json``: the server's ``/object_info``.

"Control after generate" inputs (randomize, increment, ...) are replaced by a placeholder on both
sides before comparing (``controlled`` in the manifests).

Run the comparisons alone (no server needed)::

    PYTHONPATH=$PWD .venv/bin/python -m pytest -q -s tests/integration/test_workflow_oracle.py -m "not comfyui"
"""

from __future__ import annotations

import json
import uuid
from functools import cache
from pathlib import Path

import pytest

from prefect_comfy import to_api_format
from tests.support.frontend_oracle import normalise
from tests.support.workflow_templates import (
    Template,
    TemplatesUnavailable,
    ensure_templates,
    iter_templates,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = FIXTURES / "workflows" / "cases"
TEMPLATES = FIXTURES / "workflows" / "templates"
OBJECT_INFO = FIXTURES / "object_info" / "comfyui-0.3.75.json"
#: Share of the templates (all node types known to the server) whose graph must match the frontend's.
MIN_TEMPLATE_MATCH_RATE = 0.98


@cache
def object_info() -> dict:
    return json.loads(OBJECT_INFO.read_text(encoding="utf-8"))


def case_names() -> list[str]:
    manifest = json.loads((CASES / "manifest.json").read_text(encoding="utf-8"))
    return sorted(manifest)


def _short(value: object, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def graph_diff(expected: dict, actual: dict, controlled: list[str] = ()) -> list[str]:
    """Readable differences between two API graphs (empty when they match).

    Inputs listed in ``controlled`` (``"<node id>.<input>"``) are compared as placeholders.
    """
    expected = normalise(expected, list(controlled))
    actual = normalise(actual, list(controlled))
    lines: list[str] = []
    for node_id in sorted(set(expected) | set(actual), key=lambda k: (len(k), k)):
        want, got = expected.get(node_id), actual.get(node_id)
        if got is None:
            lines.append(f"  node {node_id} ({want.get('class_type')}): missing")
            continue
        if want is None:
            lines.append(f"  node {node_id} ({got.get('class_type')}): not expected")
            continue
        label = f"node {node_id} ({want.get('class_type')})"
        if want.get("class_type") != got.get("class_type"):
            lines.append(f"  {label}: class_type {got.get('class_type')!r}")
        want_in, got_in = want.get("inputs", {}), got.get("inputs", {})
        for name in list(want_in) + [n for n in got_in if n not in want_in]:
            if name not in got_in:
                lines.append(f"  {label}.{name}: missing (expected {_short(want_in[name])})")
            elif name not in want_in:
                lines.append(f"  {label}.{name}: not expected (got {_short(got_in[name])})")
            elif want_in[name] != got_in[name]:
                lines.append(
                    f"  {label}.{name}: expected {_short(want_in[name])}, "
                    f"got {_short(got_in[name])}"
                )
        if want.get("_meta") != got.get("_meta"):
            lines.append(f"  {label}._meta: expected {want.get('_meta')}, got {got.get('_meta')}")
    return lines


def test_graph_diff_sees_every_kind_of_difference_and_ignores_only_controlled_inputs() -> None:
    expected = {
        "1": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "model": ["2", 0]}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a"}},
    }
    same_but_seed = json.loads(json.dumps(expected))
    same_but_seed["1"]["inputs"]["seed"] = 6
    assert graph_diff(expected, same_but_seed, ["1.seed"]) == []
    assert graph_diff(expected, same_but_seed) == ["  node 1 (KSampler).seed: expected 5, got 6"]
    other = json.loads(json.dumps(expected))
    other["1"]["inputs"]["model"] = ["2", 1]
    del other["1"]["inputs"]["steps"]
    other["1"]["inputs"]["cfg"] = 8
    other["1"]["_meta"] = {"title": "K"}
    del other["2"]
    other["3"] = {"class_type": "Note", "inputs": {}}
    assert graph_diff(expected, other, ["1.model"]) == [
        "  node 1 (KSampler).steps: missing (expected 20)",
        '  node 1 (KSampler).model: expected ["2", 0], got ["2", 1]',
        "  node 1 (KSampler).cfg: not expected (got 8)",
        "  node 1 (KSampler)._meta: expected None, got {'title': 'K'}",
        "  node 2 (CheckpointLoaderSimple): missing",
        "  node 3 (Note): not expected",
    ]


# --------------------------------------------------------------------------------------------------
# hand-made cases: all must match


@pytest.mark.parametrize("name", case_names())
def test_hand_made_case_matches_the_frontend(name: str) -> None:
    manifest = json.loads((CASES / "manifest.json").read_text(encoding="utf-8"))[name]
    workflow = json.loads((CASES / f"{name}.json").read_text(encoding="utf-8"))
    expected = json.loads((CASES / f"{name}.api.json").read_text(encoding="utf-8"))
    actual = to_api_format(workflow, object_info())
    diff = graph_diff(expected, actual, manifest["controlled"])
    assert not diff, f"{name}: the converter differs from the frontend:\n" + "\n".join(diff)


def test_every_case_has_its_oracle_output() -> None:
    """A case added by hand without rerunning the oracle script is caught here."""
    saved = {
        p.name.removesuffix(".json")
        for p in CASES.glob("*.json")
        if not p.name.endswith(".api.json") and p.name != "manifest.json"
    }
    assert saved == set(case_names()), (
        "rerun scripts/workflow_oracle.py --only cases: cases without oracle output: "
        f"{sorted(saved - set(case_names()))}; outputs without a case: "
        f"{sorted(set(case_names()) - saved)}"
    )


# --------------------------------------------------------------------------------------------------
# official templates: at least 98 % of the ones whose node types the server knows


@pytest.fixture(scope="module")
def templates() -> dict[str, Template]:
    try:
        directory = ensure_templates()
    except TemplatesUnavailable as exc:
        pytest.skip(f"the template wheels are not cached and could not be downloaded: {exc}")
    return {t.id: t for t in iter_templates(directory)}


def test_templates_match_the_frontend(templates: dict[str, Template]) -> None:
    manifest = json.loads((TEMPLATES / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest) == set(templates), "the manifest and the template package disagree"
    compared = matched = 0
    lacking: list[str] = []
    failures: list[str] = []
    for template_id, entry in sorted(manifest.items()):
        if entry["format"] != "save" or "error" in entry:
            continue
        if entry["missing_types"]:
            lacking.append(template_id)
            continue
        template = templates[template_id]
        assert template.sha256 == entry["sha256"], (
            f"{template_id}: the template file changed since the oracle ran; "
            "rerun scripts/workflow_oracle.py"
        )
        expected = json.loads((TEMPLATES / f"{template_id}.api.json").read_text(encoding="utf-8"))
        compared += 1
        try:
            actual = to_api_format(template.load(), object_info())
        except Exception as exc:  # noqa: BLE001 - every failure is reported, not only the first
            failures.append(f"{template_id}: {type(exc).__name__}: {exc}")
            continue
        diff = graph_diff(expected, actual, entry["controlled"])
        if diff:
            more = f"\n  ... {len(diff) - 15} more" if len(diff) > 15 else ""
            failures.append(f"{template_id}:\n" + "\n".join(diff[:15]) + more)
        else:
            matched += 1
    rate = matched / compared if compared else 0.0
    summary = (
        f"templates: {len(manifest)}; compared (save format, all node types known): {compared}; "
        f"matched: {matched} ({rate:.1%}); skipped for node types the server lacks: {len(lacking)}"
    )
    print(summary)
    for failure in failures:
        print(failure)
    assert compared > 0
    assert rate >= MIN_TEMPLATE_MATCH_RATE, summary + "\n" + "\n".join(failures)


# --------------------------------------------------------------------------------------------------
# against the real ComfyUI


@pytest.mark.comfyui
async def test_converted_model_free_case_runs_on_comfyui(comfyui_server, tmp_path: Path) -> None:
    from prefect_comfy.backends.comfyui.backend import ComfyUIBackend
    from prefect_comfy.waiting.waits import wait_for

    workflow = json.loads((CASES / "model_free.json").read_text(encoding="utf-8"))
    async with ComfyUIBackend(comfyui_server.url) as backend:
        graph = to_api_format(workflow, object_info())
        # The Reroute and the Note are gone; what runs is EmptyImage -> ImageInvert -> SaveImage.
        assert sorted(n["class_type"] for n in graph.values()) == [
            "EmptyImage",
            "ImageInvert",
            "SaveImage",
        ]
        prefix = f"oracle-{uuid.uuid4().hex[:8]}"
        graph[next(k for k, n in graph.items() if n["class_type"] == "SaveImage")]["inputs"][
            "filename_prefix"
        ] = prefix
        job = await backend.submit(graph)
        event = await wait_for(backend, "job", job.id, timeout=120)
        assert event.event == "job.completed", event
        done = await backend.get_job(job.id)
        [output] = done.outputs
        assert output.name.startswith(prefix)
        path = await backend.download(output, tmp_path)
    from PIL import Image

    with Image.open(path) as image:
        assert image.size == (64, 48)
        # EmptyImage colour 0x336699 inverted by ImageInvert (1 - x in floats: allow rounding).
        pixel = image.convert("RGB").getpixel((0, 0))
        expected = (0xFF - 0x33, 0xFF - 0x66, 0xFF - 0x99)
        assert all(abs(a - b) <= 1 for a, b in zip(pixel, expected, strict=True)), pixel


@pytest.mark.comfyui
async def test_committed_case_outputs_are_what_the_frontend_makes_today(comfyui_server) -> None:
    """The oracle itself, live: the committed expected graphs are not stale."""
    from tests.support.frontend_oracle import FrontendOracle

    manifest = json.loads((CASES / "manifest.json").read_text(encoding="utf-8"))
    stale: list[str] = []
    async with FrontendOracle(comfyui_server.url) as oracle:
        for name in case_names():
            workflow = json.loads((CASES / f"{name}.json").read_text(encoding="utf-8"))
            expected = json.loads((CASES / f"{name}.api.json").read_text(encoding="utf-8"))
            result = await oracle.convert(workflow)
            assert sorted(result["controlled"]) == sorted(manifest[name]["controlled"]), name
            diff = graph_diff(expected, result["output"], result["controlled"])
            if diff:
                stale.append(f"{name}:\n" + "\n".join(diff))
    assert not stale, "rerun scripts/workflow_oracle.py --only cases:\n" + "\n".join(stale)
