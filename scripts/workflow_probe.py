"""Edge cases beyond the oracle's set, converted by the real frontend: regenerates
tests/fixtures/workflows/probed/ (the save-format files, the frontend's graphs, a manifest) and
prints how the converter compares.

Variants of the oracle's hand-made cases ``subgraph`` and ``seeds``: a muted and a bypassed
subgraph node, a bypassed node inside a subgraph, dict-form and short ``widgets_values``, a
KSampler without its control value, a bypassed loader whose outputs nothing can replace.

    PYTHONPATH=$PWD .venv/bin/python scripts/workflow_probe.py

Starts the installed ComfyUI 0.3.75 and headless Chromium (see tests/support/frontend_oracle.py),
and stops both.
"""

import asyncio
import copy
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prefect_comfy.workflows.convert import convert_workflow
from tests.support.comfyui_server import ensure_comfyui, running_comfyui
from tests.support.frontend_oracle import FrontendOracle, normalise

ROOT = Path(__file__).resolve().parents[1]
C = ROOT / "tests/fixtures/workflows/cases"
oi = json.loads((ROOT / "tests/fixtures/object_info/comfyui-0.3.75.json").read_text())
sub = json.loads((C / "subgraph.json").read_text())
cases = {}
for mode in (2, 4):
    w = copy.deepcopy(sub)
    [n for n in w["nodes"] if n["id"] == 5][0]["mode"] = mode
    cases[f"subgraph_mode{mode}"] = w
w = copy.deepcopy(sub)
for n in w["definitions"]["subgraphs"][0]["nodes"]:
    if n["id"] == 3:
        n["mode"] = 4
cases["inner_bypass"] = w
w = copy.deepcopy(sub)
[n for n in w["nodes"] if n["id"] == 1][0]["widgets_values"] = {"width": 16, "height": 8}
cases["dict_widgets"] = w
w = copy.deepcopy(sub)
[n for n in w["nodes"] if n["id"] == 1][0]["widgets_values"] = [16]
cases["short_widgets"] = w
ks = json.loads((C / "seeds.json").read_text())
w = copy.deepcopy(ks)
for n in w["nodes"]:
    if n["type"] == "KSampler":
        n["widgets_values"] = n["widgets_values"][:1]
cases["ksampler_short"] = w
w = copy.deepcopy(ks)
for n in w["nodes"]:
    if n["type"] == "CheckpointLoaderSimple":
        n["mode"] = 4
cases["bypass_loader"] = w

manifest = {}


async def main():
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_comfyui(ensure_comfyui(), Path(tmp)) as server,
    ):
        async with FrontendOracle(server.url) as oracle:
            for name, wf in cases.items():
                res = await oracle.convert(wf)
                out = ROOT / "tests/fixtures/workflows/probed"
                (out / f"{name}.json").write_text(json.dumps(wf, indent=1) + "\n")
                (out / f"{name}.api.json").write_text(json.dumps(res["output"], indent=1) + "\n")
                manifest[name] = {
                    "controlled": res["controlled"],
                    "base": "subgraph"
                    if "widgets" in name or "subgraph" in name or "inner" in name
                    else "seeds",
                }
                try:
                    got = convert_workflow(wf, oi)
                    g = got.graph
                except Exception as e:
                    print(
                        name,
                        "CONVERTER ERROR",
                        e,
                        "| frontend:",
                        json.dumps(res["output"])[:400],
                    )
                    continue
                a, b = (
                    normalise(res["output"], res["controlled"]),
                    normalise(g, res["controlled"]),
                )
                print(
                    name,
                    "SAME" if a == b and list(a) == list(b) else "DIFF",
                    res["controlled"],
                    sorted(f"{k[0]}.{k[1]}" for k, v in got.controls.items() if v != "fixed"),
                )
                if a != b:
                    print("   frontend:", json.dumps(res["output"])[:700])
                    print("   mine:    ", json.dumps(g)[:700])


asyncio.run(main())
(ROOT / "tests/fixtures/workflows/probed/manifest.json").write_text(
    json.dumps(manifest, indent=1, sort_keys=True) + "\n"
)
