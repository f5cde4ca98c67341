"""The ComfyUI frontend as an oracle: save format in, the API graph the editor would queue out.

A real ComfyUI serves its own web frontend (``comfyui_frontend_package``); :class:`FrontendOracle`
opens it in headless Debian Chromium (``/usr/bin/chromium``, never a downloaded browser) and drives the
page over the DevTools protocol (``tests/support/browser.py``, the tests' one browser). For one workflow,
:meth:`FrontendOracle.convert` does what the editor does before it queues:

1. ``await app.loadGraphData(workflow)`` (no missing-node or missing-model dialog);
2. ``(await app.graphToPrompt()).output``: the expected API graph;
3. every widget's ``afterQueued()`` (what the editor runs after a successful queue; setting
   ``Comfy.WidgetControlMode`` is "after", the default), then ``graphToPrompt()`` again: the inputs
   that changed are the ones "control after generate" randomizes or steps. The converter randomizes
   nothing, so a comparison replaces these inputs' values on both sides (see :func:`normalise`).

The browser reaches only 127.0.0.1 (``--host-resolver-rules``): the frontend's calls to the internet
(template index, news) fail fast and change nothing here.
"""

from __future__ import annotations

import asyncio
import json
import time

from tests.support.browser import Browser, BrowserError, Page

#: Placeholder for an input that "control after generate" changes (see :func:`normalise`).
CONTROLLED = "<controlled>"

# Runs in the page: one workflow through the frontend. Returns JSON text (one round trip).
_CONVERT_JS = """
async (wf) => {
  const nodesOf = (g) => [...g.nodes, ...[...(g.subgraphs?.values?.() ?? [])].flatMap((s) => s.nodes)];
  const missing = new Set();
  const collect = (nodes) => { for (const n of nodes ?? []) {
    if (!(n.type in LiteGraph.registered_node_types)) missing.add(n.type); } };
  const subgraphIds = new Set((wf.definitions?.subgraphs ?? []).map((s) => s.id));
  collect(wf.nodes); for (const s of wf.definitions?.subgraphs ?? []) collect(s.nodes);
  for (const id of subgraphIds) missing.delete(id);
  await app.loadGraphData(wf, true, false, null,
    {showMissingNodesDialog: false, showMissingModelsDialog: false});
  const first = (await app.graphToPrompt()).output;
  const frozen = JSON.parse(JSON.stringify(first));
  for (const n of nodesOf(app.graph)) for (const w of n.widgets ?? []) w.afterQueued?.();
  const second = (await app.graphToPrompt()).output;
  const controlled = [];
  for (const [id, node] of Object.entries(frozen)) {
    for (const [name, value] of Object.entries(node.inputs ?? {})) {
      const after = second[id]?.inputs?.[name];
      if (JSON.stringify(after) !== JSON.stringify(value)) controlled.push(`${id}.${name}`);
    }
  }
  return JSON.stringify({output: frozen, controlled, missing_types: [...missing].sort()});
}
"""

_SETTINGS = {
    "Comfy.WidgetControlMode": "after",
    "Comfy.Workflow.ShowMissingNodesWarning": False,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Validation.Workflows": True,
}


OracleError = BrowserError
"""The page failed (an exception in the frontend, a timeout, a dead browser)."""


class FrontendOracle:
    """Headless Chromium on a running ComfyUI's frontend. Use as ``async with``."""

    def __init__(self, comfyui_url: str, *, startup_timeout: float = 120.0) -> None:
        self.url = comfyui_url.rstrip("/")
        self.startup_timeout = startup_timeout
        self.frontend_version: str | None = None
        self.browser_version: str | None = None
        self._browser = Browser()
        self.page: Page | None = None

    async def __aenter__(self) -> FrontendOracle:
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _start(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        self.page = await self._browser.start((1280, 1024), self.startup_timeout)
        self.browser_version = self._browser.version
        await self.page.call("Page.navigate", url=self.url + "/")
        ready = "!!(window.app?.graph && window.LiteGraph && window.app.extensionManager?.setting)"
        while not await self.page.evaluate(ready):
            if time.monotonic() > deadline:
                raise OracleError(
                    f"the ComfyUI frontend at {self.url} did not start: {self.console}"
                )
            await asyncio.sleep(0.3)
        for key, value in _SETTINGS.items():
            await self.page.evaluate(
                f"app.extensionManager.setting.set({json.dumps(key)}, {json.dumps(value)})"
            )
        self.frontend_version = await self.page.evaluate("window.__COMFYUI_FRONTEND_VERSION__")

    @property
    def console(self) -> list[str]:
        return self.page.console if self.page else []

    async def convert(self, workflow: dict, timeout: float = 120.0) -> dict:
        """The frontend's API graph for a save-format workflow.

        Returns:
            ``{"output": <API graph>, "controlled": ["<node id>.<input>", ...],
            "missing_types": [<node types the frontend does not know>]}``.
        """
        assert self.page is not None
        text = await self.page.evaluate(f"({_CONVERT_JS})({json.dumps(workflow)})", timeout)
        return json.loads(text)

    async def build(self, builder_js: str, timeout: float = 60.0) -> dict:
        """Run ``builder_js`` (a function of no argument that adds nodes to ``app.graph``) on an
        empty graph and return ``app.graph.serialize()``: a save-format file made by the editor."""
        assert self.page is not None
        text = await self.page.evaluate(
            "(async () => { app.graph.clear(); await (" + builder_js + ")();"
            " return JSON.stringify(app.graph.serialize()); })()",
            timeout,
        )
        return json.loads(text)

    async def aclose(self) -> None:
        self.page = None
        await self._browser.close()


def normalise(graph: dict, controlled: list[str]) -> dict:
    """A copy of an API graph with every "control after generate" input set to :data:`CONTROLLED`.

    ``controlled`` holds ``"<node id>.<input name>"`` (node ids may contain ``:`` for subgraphs; the
    input name is after the last dot).
    """
    out = json.loads(json.dumps(graph))
    for key in controlled:
        node_id, _, name = key.rpartition(".")
        inputs = out.get(node_id, {}).get("inputs", {})
        if name in inputs and not isinstance(inputs[name], list):
            inputs[name] = CONTROLLED
    return out
