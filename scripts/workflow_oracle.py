"""Regenerate the oracle fixtures: what the real ComfyUI frontend makes of save-format workflows.

Which ComfyUI: the one ``scripts/install-comfyui.sh`` installs (0.3.75, its frontend
``comfyui_frontend_package`` 1.32.9), found and started the way the tests do
(``tests/support/comfyui_server.py``: ``PREFECT_COMFY_COMFYUI_DIR`` wins; temporary folders; no custom
nodes, no API nodes). It is driven in headless ``/usr/bin/chromium`` over the DevTools protocol
(``tests/support/frontend_oracle.py``): for each workflow ``app.loadGraphData(wf)`` then
``(await app.graphToPrompt()).output``.

Which templates: ``comfyui-workflow-templates`` 0.7.25 (pinned by ComfyUI 0.3.75's requirements.txt),
whose files live in five wheels that are downloaded once into
``~/.cache/prefect-comfy/templates-0.7.25/`` (``tests/support/workflow_templates.py``); the templates
themselves are not committed.

Where outputs go (default ``--out tests/fixtures``):

- ``object_info/comfyui-0.3.75.json``: the server's ``GET /object_info`` (compact JSON).
- ``workflows/oracle.json``: the versions of ComfyUI, its frontend, the templates and Chromium used.
- ``workflows/templates/<id>.api.json``: the frontend's API graph per save-format template.
- ``workflows/templates/manifest.json``: per template its distribution, version, path in the wheel,
  sha256, format (``save``, or ``other`` for the gallery's ``index*.json``), the node types the
  server or its frontend lacks, the inputs "control after generate" changes
  (``controlled``), or the error the frontend raised.
- ``workflows/cases/<name>.json``: hand-made hard cases in save format, made in the page by the
  frontend's own API and ``app.graph.serialize()`` (built only when missing, or with
  ``--rebuild-cases``); every ``cases/*.json`` (also ones added by hand) gets
  ``cases/<name>.api.json`` and an entry in ``cases/manifest.json``.

Idempotent: the same ComfyUI, frontend and templates give byte-identical files.

Usage::

    PYTHONPATH=$PWD .venv/bin/python scripts/workflow_oracle.py [--out DIR] [--only cases|templates]
        [--rebuild-cases] [--limit N]

Prints a summary: templates in the package, in save format, loaded by the frontend, with node types
the server lacks, failed; hand-made cases; seconds taken.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.support.comfyui_server import ensure_comfyui, running_comfyui  # noqa: E402
from tests.support.frontend_oracle import FrontendOracle, OracleError  # noqa: E402
from tests.support.workflow_templates import (  # noqa: E402
    TEMPLATES_VERSION,
    ensure_templates,
    iter_templates,
)

COMFYUI_VERSION = "0.3.75"

# Hand-made hard cases, built in the page with the frontend's own API. Each is a JS function that
# adds nodes to the (empty) app.graph; `h` holds small helpers defined in _HELPERS_JS.
_HELPERS_JS = """
const h = {
  add(type, pos, values = {}, title) {
    const n = LiteGraph.createNode(type);
    if (!n) throw new Error(`cannot create ${type}`);
    n.pos = pos;
    app.graph.add(n);
    h.set(n, values);
    if (title) n.title = title;
    return n;
  },
  set(n, values) {
    for (const [k, v] of Object.entries(values)) {
      const w = n.widgets?.find((w) => w.name === k);
      if (!w) throw new Error(`${n.type} has no widget ${k} (has ${(n.widgets ?? []).map((w) => w.name)})`);
      w.value = v;
      w.callback?.(v);
    }
  },
  prim(n, value, control) {
    // A PrimitiveNode's widget takes the name of the widget it feeds.
    n.widgets[0].value = value;
    n.widgets[0].callback?.(value);
    if (control) h.set(n, {control_after_generate: control});
  },
  mode(n, mode) {
    // As the editor's mute/bypass commands do (toggleSelectedNodesMode): a subgraph node's mode
    // is given to every node inside it, at every depth.
    n.mode = mode;
    const walk = (sg) => { for (const m of sg.nodes) { m.mode = mode; if (m.subgraph) walk(m.subgraph); } };
    if (n.subgraph) walk(n.subgraph);
  },
  link(a, out, b, inp) {
    const r = a.connect(out, b, inp);
    if (!r) throw new Error(`cannot link ${a.type}[${out}] -> ${b.type}[${inp}]`);
    return r;
  },
  sd(x, y, seed, control) {
    const ckpt = h.add('CheckpointLoaderSimple', [x, y], {ckpt_name: 'sd15.safetensors'});
    const pos = h.add('CLIPTextEncode', [x + 300, y], {text: 'a fox in the snow'}, 'Positive');
    const neg = h.add('CLIPTextEncode', [x + 300, y + 200], {text: 'blurry'}, 'Negative');
    const lat = h.add('EmptyLatentImage', [x + 300, y + 400], {width: 512, height: 512});
    const ks = h.add('KSampler', [x + 650, y], {seed, control_after_generate: control, steps: 20});
    h.link(ckpt, 0, ks, 'model'); h.link(ckpt, 1, pos, 'clip'); h.link(ckpt, 1, neg, 'clip');
    h.link(pos, 0, ks, 'positive'); h.link(neg, 0, ks, 'negative'); h.link(lat, 0, ks, 'latent_image');
    const dec = h.add('VAEDecode', [x + 1000, y]);
    h.link(ks, 0, dec, 'samples'); h.link(ckpt, 2, dec, 'vae');
    const save = h.add('SaveImage', [x + 1250, y], {filename_prefix: 'oracle'});
    h.link(dec, 0, save, 'images');
    return {ckpt, pos, neg, lat, ks, dec, save};
  },
};
"""

CASES: dict[str, str] = {
    # The model-free graph the integration test runs on the real ComfyUI.
    "model_free": """() => {
      const img = h.add('EmptyImage', [0, 0], {width: 64, height: 48, batch_size: 1, color: 0x336699});
      const r = h.add('Reroute', [300, 0]);
      const inv = h.add('ImageInvert', [450, 0], {}, 'Invert it');
      const save = h.add('SaveImage', [700, 0], {filename_prefix: 'oracle/model_free'});
      h.link(img, 0, r, 0); h.link(r, 0, inv, 0); h.link(inv, 0, save, 0);
      h.add('Note', [0, 300], {text: 'EmptyImage -> Reroute -> ImageInvert -> SaveImage'});
    }""",
    "reroute_chain": """() => {
      const img = h.add('EmptyImage', [0, 0], {width: 32, height: 32});
      let prev = img;
      for (let i = 0; i < 3; i++) {
        const r = h.add('Reroute', [250 + 120 * i, 0]); h.link(prev, 0, r, 0); prev = r;
      }
      const inv = h.add('ImageInvert', [700, 0]);
      h.link(prev, 0, inv, 0);
      const r2 = h.add('Reroute', [700, 200]); h.link(prev, 0, r2, 0);
      const save = h.add('SaveImage', [950, 0], {filename_prefix: 'chain'});
      h.link(inv, 0, save, 0);
      const preview = h.add('PreviewImage', [950, 300]); h.link(r2, 0, preview, 0);
    }""",
    "primitive_two_widgets": """() => {
      const img = h.add('EmptyImage', [300, 0], {width: 32, height: 32});
      const prim = h.add('PrimitiveNode', [0, 0], {}, 'Size');
      h.link(prim, 0, img, 'width');
      h.link(prim, 0, img, 'height');
      h.prim(prim, 96);
      const save = h.add('SaveImage', [600, 0], {filename_prefix: 'square'});
      h.link(img, 0, save, 0);
    }""",
    "bypass_chain": """() => {
      const img = h.add('EmptyImage', [0, 0], {width: 32, height: 32});
      const a = h.add('ImageInvert', [250, 0], {}, 'Bypassed 1');
      const b = h.add('ImageInvert', [450, 0], {}, 'Bypassed 2');
      const c = h.add('ImageInvert', [650, 0], {}, 'Kept');
      const d = h.add('ImageBlur', [850, 0], {blur_radius: 3, sigma: 1.5}, 'Bypassed blur');
      const save = h.add('SaveImage', [1100, 0], {filename_prefix: 'bypass'});
      h.link(img, 0, a, 0); h.link(a, 0, b, 0); h.link(b, 0, c, 0); h.link(c, 0, d, 0);
      h.link(d, 0, save, 0);
      h.mode(a, 4); h.mode(b, 4); h.mode(d, 4);
    }""",
    "muted_branch": """() => {
      const img = h.add('EmptyImage', [0, 0], {width: 32, height: 32});
      const save = h.add('SaveImage', [300, 0], {filename_prefix: 'kept'});
      h.link(img, 0, save, 0);
      const inv = h.add('ImageInvert', [300, 200], {}, 'Muted');
      const save2 = h.add('SaveImage', [600, 200], {filename_prefix: 'muted-branch'}, 'After muted');
      h.link(img, 0, inv, 0); h.link(inv, 0, save2, 0);
      h.mode(inv, 2);
      const save3 = h.add('SaveImage', [600, 400], {filename_prefix: 'muted-save'}, 'Muted save');
      h.link(img, 0, save3, 0);
      h.mode(save3, 2);
    }""",
    "widget_as_input": """() => {
      const w = h.add('PrimitiveInt', [0, 0], {value: 80}, 'Width');
      const img = h.add('EmptyImage', [300, 0], {width: 32, height: 40});
      h.link(w, 0, img, 'width');
      const s = h.add('PrimitiveStringMultiline', [0, 300], {value: 'from/a/node'});
      const save = h.add('SaveImage', [600, 0], {filename_prefix: 'unused'});
      h.link(img, 0, save, 'images');
      h.link(s, 0, save, 'filename_prefix');
    }""",
    "seeds": """() => {
      const a = h.sd(0, 0, 123456789, 'randomize');
      a.ks.title = 'Random seed';
      const b = h.sd(0, 700, 42, 'fixed');
      b.ks.title = 'Fixed seed';
      const c = h.sd(0, 1400, 1000, 'increment');
      c.ks.title = 'Incrementing seed';
      const prim = h.add('PrimitiveNode', [0, 2100], {}, 'Shared seed');
      const d = h.sd(300, 2100, 5, 'fixed');
      h.link(prim, 0, d.ks, 'seed');
      h.prim(prim, 777, 'randomize');
      const noise = h.add('RandomNoise', [0, 2900], {noise_seed: 99, control_after_generate: 'fixed'});
    }""",
    "subgraph": """() => {
      const img = h.add('EmptyImage', [0, 0], {width: 40, height: 24});
      const inv = h.add('ImageInvert', [300, 0], {}, 'Inner invert');
      const blur = h.add('ImageBlur', [500, 0], {blur_radius: 2, sigma: 1.0}, 'Inner blur');
      const save = h.add('SaveImage', [800, 0], {filename_prefix: 'subgraph'});
      h.link(img, 0, inv, 0); h.link(inv, 0, blur, 0); h.link(blur, 0, save, 0);
      const {node} = app.graph.convertToSubgraph(new Set([inv, blur]));
      node.title = 'Invert and blur';
    }""",
    "native_reroutes": """() => {
      // The editor's own reroutes (dots on a link: graph.reroutes, not a Reroute node).
      const img = h.add('EmptyImage', [0, 0], {width: 24, height: 24});
      const inv = h.add('ImageInvert', [500, 0]);
      const link = h.link(img, 0, inv, 0);
      const first = app.graph.createReroute([250, 100], link);
      app.graph.createReroute([350, 100], first);
      const save = h.add('SaveImage', [800, 0], {filename_prefix: 'native'});
      h.link(inv, 0, save, 0);
    }""",
    "nested_subgraph": """() => {
      const img = h.add('EmptyImage', [0, 0], {width: 40, height: 24});
      const a = h.add('ImageInvert', [300, 0], {}, 'Outer invert');
      const b = h.add('ImageBlur', [500, 0], {blur_radius: 2, sigma: 1.0}, 'Inner blur');
      const c = h.add('ImageInvert', [700, 0], {}, 'Inner invert');
      const save = h.add('SaveImage', [1000, 0], {filename_prefix: 'nested'});
      h.link(img, 0, a, 0); h.link(a, 0, b, 0); h.link(b, 0, c, 0); h.link(c, 0, save, 0);
      const inner = app.graph.convertToSubgraph(new Set([b, c])).node;
      inner.title = 'Inner';
      const outer = app.graph.convertToSubgraph(new Set([a, inner])).node;
      outer.title = 'Outer';
    }""",
    "subgraph_bypassed_and_muted": """() => {
      const img = h.add('EmptyImage', [0, 0], {width: 40, height: 24});
      const a = h.add('ImageInvert', [300, 0], {}, 'In a bypassed subgraph');
      const save = h.add('SaveImage', [600, 0], {filename_prefix: 'bypassed-subgraph'});
      h.link(img, 0, a, 0); h.link(a, 0, save, 0);
      const bypassed = app.graph.convertToSubgraph(new Set([a])).node;
      bypassed.title = 'Bypassed subgraph';
      h.mode(bypassed, 4);
      const b = h.add('ImageInvert', [300, 300], {}, 'Bypassed inside');
      const c = h.add('ImageBlur', [500, 300], {blur_radius: 1, sigma: 0.5}, 'Kept inside');
      const save2 = h.add('SaveImage', [800, 300], {filename_prefix: 'inner-bypass'});
      h.link(img, 0, b, 0); h.link(b, 0, c, 0); h.link(c, 0, save2, 0);
      h.mode(b, 4);
      app.graph.convertToSubgraph(new Set([b, c])).node.title = 'Bypass inside';
      const d = h.add('ImageInvert', [300, 600], {}, 'In a muted subgraph');
      const save3 = h.add('SaveImage', [600, 600], {filename_prefix: 'muted-subgraph'});
      h.link(img, 0, d, 0); h.link(d, 0, save3, 0);
      const muted = app.graph.convertToSubgraph(new Set([d])).node;
      muted.title = 'Muted subgraph';
      h.mode(muted, 2);
    }""",
    "subgraph_mode_outer_only": """() => {
      // A file whose subgraph nodes are bypassed/muted but the nodes inside are not (mode set
      // directly, not by the editor's command): frontend 1.32.9 still runs the muted one's inside.
      const img = h.add('EmptyImage', [0, 0], {width: 40, height: 24});
      const a = h.add('ImageInvert', [300, 0], {}, 'In a bypassed subgraph');
      const save = h.add('SaveImage', [600, 0], {filename_prefix: 'bypassed-subgraph'});
      h.link(img, 0, a, 0); h.link(a, 0, save, 0);
      app.graph.convertToSubgraph(new Set([a])).node.mode = 4;
      const d = h.add('ImageInvert', [300, 600], {}, 'In a muted subgraph');
      const save3 = h.add('SaveImage', [600, 600], {filename_prefix: 'muted-subgraph'});
      h.link(img, 0, d, 0); h.link(d, 0, save3, 0);
      app.graph.convertToSubgraph(new Set([d])).node.mode = 2;
    }""",
    "subgraph_widget_input": """() => {
      // A widget of an inner node promoted to the subgraph's input, set on the outer node.
      const img = h.add('EmptyImage', [0, 0], {width: 40, height: 24});
      const blur = h.add('ImageBlur', [300, 0], {blur_radius: 2, sigma: 1.0}, 'Blur');
      const save = h.add('SaveImage', [600, 0], {filename_prefix: 'promoted'});
      h.link(img, 0, blur, 0); h.link(blur, 0, save, 0);
      const prim = h.add('PrimitiveInt', [0, 300], {value: 7, control_after_generate: 'fixed'}, 'Radius');
      h.link(prim, 0, blur, 'blur_radius');
      const sub = app.graph.convertToSubgraph(new Set([blur, prim])).node;
      sub.title = 'Blur with radius';
    }""",
    "notes": """() => {
      const img = h.add('EmptyImage', [0, 0], {width: 16, height: 16});
      const save = h.add('SaveImage', [300, 0], {filename_prefix: 'notes'});
      h.link(img, 0, save, 0);
      h.add('Note', [0, 300], {text: 'A plain note'});
      h.add('MarkdownNote', [300, 300], {text: '# A markdown note'});
    }""",
}


def _dump(data: object) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n"


def _write(path: Path, text: str) -> None:
    """Write only when the content differs (keeps mtimes and git quiet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _oracle_cases(oracle: FrontendOracle, out: Path, rebuild: bool) -> dict:
    cases_dir = out / "workflows" / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    for name, builder in CASES.items():
        path = cases_dir / f"{name}.json"
        if rebuild or not path.exists():
            workflow = await oracle.build(f"async () => {{ {_HELPERS_JS}; await ({builder})(); }}")
            _write(path, json.dumps(workflow, indent=1, ensure_ascii=False) + "\n")
    manifest: dict[str, dict] = {}
    for path in sorted(cases_dir.glob("*.json")):
        if path.name.endswith(".api.json") or path.name == "manifest.json":
            continue
        name = path.name.removesuffix(".json")
        data = path.read_bytes()
        result = await oracle.convert(json.loads(data))
        _write(cases_dir / f"{name}.api.json", _dump(result["output"]))
        manifest[name] = {
            "sha256": _sha256(data),
            "controlled": result["controlled"],
            "missing_types": result["missing_types"],
        }
    _write(cases_dir / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


async def _oracle_templates(
    oracle: FrontendOracle, out: Path, object_info: dict, limit: int | None
) -> dict:
    tdir = out / "workflows" / "templates"
    tdir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, dict] = {}
    for i, template in enumerate(iter_templates(ensure_templates())):
        if limit is not None and i >= limit:
            break
        if i and i % 25 == 0:
            print(f"  {i} templates done", flush=True)
        workflow = template.load()
        entry: dict = {
            "distribution": template.distribution,
            "version": template.version,
            "path": template.path,
            "sha256": template.sha256,
        }
        manifest[template.id] = entry
        if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
            entry["format"] = "other"  # the gallery's index*.json files
            continue
        entry["format"] = "save"
        try:
            result = await oracle.convert(workflow)
        except OracleError as exc:
            entry["error"] = str(exc)[:500]
            print(f"  {template.id}: {str(exc)[:200]}", file=sys.stderr)
            continue
        server_lacks = sorted(
            {node.get("class_type", "<none>") for node in result["output"].values()}
            - set(object_info)
        )
        missing = set(result["missing_types"]) | set(server_lacks)
        if result["missing_types"]:
            missing.discard("<none>")  # the frontend's placeholder for a node type it lacks
        entry["missing_types"] = sorted(missing)
        entry["controlled"] = result["controlled"]
        _write(tdir / f"{template.id}.api.json", _dump(result["output"]))
    _write(tdir / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


async def _run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    out: Path = args.out
    install = ensure_comfyui()
    with (
        tempfile.TemporaryDirectory(prefix="prefect-comfy-oracle-") as tmp,
        running_comfyui(install, Path(tmp)) as server,
    ):
        with urllib.request.urlopen(f"{server.url}/object_info", timeout=60) as resp:
            object_info = json.loads(resp.read())
        _write(out / "object_info" / f"comfyui-{COMFYUI_VERSION}.json", _dump(object_info))
        async with FrontendOracle(server.url) as oracle:
            print(f"ComfyUI {COMFYUI_VERSION}, frontend {oracle.frontend_version}", flush=True)
            about = {
                "comfyui": COMFYUI_VERSION,
                "frontend": oracle.frontend_version,
                "templates": TEMPLATES_VERSION,
                "browser": oracle.browser_version,
            }
            _write(out / "workflows" / "oracle.json", json.dumps(about, indent=1) + "\n")
            cases = templates = None
            if args.only in (None, "cases"):
                cases = await _oracle_cases(oracle, out, args.rebuild_cases)
            if args.only in (None, "templates"):
                templates = await _oracle_templates(oracle, out, object_info, args.limit)
    if cases is not None:
        print(f"hand-made cases: {len(cases)}")
    if templates is not None:
        save = [e for e in templates.values() if e["format"] == "save"]
        loaded = [e for e in save if "error" not in e]
        lacking = [e for e in loaded if e["missing_types"]]
        print(
            f"templates ({TEMPLATES_VERSION}): {len(templates)}; save format: {len(save)}; "
            f"loaded: {len(loaded)}; with node types the server lacks: {len(lacking)}; "
            f"all node types known: {len(loaded) - len(lacking)}; failed: {len(save) - len(loaded)}"
        )
    print(f"took {time.monotonic() - started:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "fixtures")
    parser.add_argument("--only", choices=("cases", "templates"))
    parser.add_argument("--rebuild-cases", action="store_true", help="rebuild the built-in cases")
    parser.add_argument("--limit", type=int, help="only the first N templates (for a quick try)")
    return asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
