"""The ComfyUI frontend as an oracle: save format in, the API graph the editor would queue out.

A real ComfyUI serves its own web frontend (``comfyui_frontend_package``); :class:`FrontendOracle`
opens it in headless Debian Chromium (``/usr/bin/chromium``, never a downloaded browser) and drives the
page over the DevTools protocol with ``websockets`` (no other dependency). For one workflow,
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
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets

CHROMIUM = os.environ.get("PREFECT_COMFY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    # Loopback only: everything else fails to resolve.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)
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


class OracleError(RuntimeError):
    """The page failed (an exception in the frontend, a timeout, a dead browser)."""


class _Page:
    """A minimal DevTools protocol session on one page target."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self.console: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                msg = json.loads(raw)
                future = self._pending.pop(msg.get("id", -1), None)
                if future is not None and not future.done():
                    future.set_result(msg)
                elif msg.get("method") == "Runtime.consoleAPICalled":
                    params = msg["params"]
                    if params["type"] in ("error", "warning"):
                        text = " ".join(
                            str(a.get("value", a.get("description", ""))) for a in params["args"]
                        )
                        self.console.append(f"{params['type']}: {text[:300]}")
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(OracleError("the browser closed the DevTools socket"))

    async def call(self, method: str, **params: Any) -> dict:
        ident = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        msg = await future
        if "error" in msg:
            raise OracleError(f"{method}: {msg['error']}")
        return msg["result"]

    async def evaluate(self, expression: str, timeout: float = 120.0) -> Any:
        try:
            result = await asyncio.wait_for(
                self.call(
                    "Runtime.evaluate",
                    expression=expression,
                    awaitPromise=True,
                    returnByValue=True,
                ),
                timeout,
            )
        except TimeoutError:
            raise OracleError(f"the page did not answer within {timeout:.0f} s") from None
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise OracleError(f"in the page: {str(text)[:1500]}")
        return result["result"].get("value")

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


class FrontendOracle:
    """Headless Chromium on a running ComfyUI's frontend. Use as ``async with``."""

    def __init__(self, comfyui_url: str, *, startup_timeout: float = 120.0) -> None:
        self.url = comfyui_url.rstrip("/")
        self.startup_timeout = startup_timeout
        self.frontend_version: str | None = None
        self.browser_version: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._profile: str | None = None
        self._ws: Any = None
        self.page: _Page | None = None

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
        self._profile = tempfile.mkdtemp(prefix="prefect-comfy-oracle-chromium-")
        self._process = subprocess.Popen(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={self._profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        port_file = Path(self._profile) / "DevToolsActivePort"
        ws_url = None
        while ws_url is None:
            if self._process.poll() is not None:
                raise OracleError(f"{CHROMIUM} exited with {self._process.returncode}")
            if time.monotonic() > deadline:
                raise OracleError(f"{CHROMIUM} did not open its DevTools port")
            lines = port_file.read_text().splitlines() if port_file.exists() else []
            if len(lines) >= 2:
                port = int(lines[0])
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    ws_url = pages[0]["webSocketDebuggerUrl"]
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version") as r:
                        self.browser_version = json.load(r).get("Browser")
                    break
            await asyncio.sleep(0.1)
        self._ws = await websockets.connect(ws_url, max_size=None, open_timeout=30)
        self.page = _Page(self._ws)
        await self.page.call("Runtime.enable")
        await self.page.call("Page.enable")
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
        if self.page is not None:
            await self.page.close()
            self.page = None
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=10)
        self._process = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None


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
