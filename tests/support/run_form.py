"""Fill in and submit a deployment's custom-run form in headless Chromium, as a person would.

    python -m tests.support.run_form API_URL DEPLOYMENT_ID FIELD=VALUE... [--screenshot PNG]

Opens ``<ui>/v2/deployments/deployment/<id>/run`` (Prefect's default UI) over the Chrome DevTools
protocol, types each ``VALUE`` into the field whose label starts with ``FIELD`` (a text area,
number or text input), optionally saves a screenshot of the filled-in form, presses *Submit*, and
prints the flow run the form created (id and parameters), as JSON. Exit code 1 if no run appeared.

It shows that the form Prefect draws from a prefect-comfy deployment's schema produces the run
parameters the flow expects (tests/integration/test_deploy_prefect.py), and takes the screenshot of
docs/workflows.md. Needs Debian's ``chromium``; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

SUBMIT_ATTEMPTS = 4
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1500",
    "--remote-debugging-port=0",
]

# Set a React-controlled field: the native setter, then the events React listens to.
SET_FIELD = """
(([label, value]) => {
  const labels = [...document.querySelectorAll('label, span, div, p')]
    .filter(e => e.children.length === 0 && e.textContent.trim().startsWith(label));
  for (const start of labels) {
    let box = start;
    for (let i = 0; i < 6 && box; i++, box = box.parentElement) {
      const field = box.querySelector('textarea, input');
      if (field) {
        const proto = field.tagName === 'TEXTAREA' ? HTMLTextAreaElement : HTMLInputElement;
        Object.getOwnPropertyDescriptor(proto.prototype, 'value').set.call(field, value);
        field.dispatchEvent(new Event('input', {bubbles: true}));
        field.dispatchEvent(new Event('change', {bubbles: true}));
        field.dispatchEvent(new Event('blur', {bubbles: true}));
        return field.tagName + ':' + field.value;
      }
    }
  }
  return null;
})
"""
# Whether a field (found as SET_FIELD finds it) holds a value: the form may reset its fields to the
# schema's defaults after they were first set, when it finishes loading (seen on an idle machine).
FIELD_HOLDS = SET_FIELD.replace(
    "Object.getOwnPropertyDescriptor(proto.prototype, 'value').set.call(field, value);", ""
).replace(
    "field.dispatchEvent(new Event('input', {bubbles: true}));\n"
    "        field.dispatchEvent(new Event('change', {bubbles: true}));\n"
    "        field.dispatchEvent(new Event('blur', {bubbles: true}));\n"
    "        return field.tagName + ':' + field.value;",
    "return field.value === String(value);",
)
SETTLE_CHECKS = 10
"""Passes of reading the fields back (a second apart) before the form is taken as settled."""

CLICK_SUBMIT = """
(() => {
  const button = [...document.querySelectorAll('button')]
    .find(b => b.textContent.trim() === 'Submit');
  if (!button) return false;
  button.click();
  return true;
})()
"""


class Page:
    """One page target over the DevTools protocol: send a command, get its result."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def until(self, expression: str, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.25)  # polling a condition with a deadline
        raise TimeoutError(f"{what} not seen within {timeout:g} s")


def _devtools_url(proc: subprocess.Popen[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"DevTools listening on (ws://\S+)", line)
        if found:
            return found.group(1)
        if not line and proc.poll() is not None:
            break
    raise RuntimeError("chromium did not open its DevTools port")


async def _run_ids(api_url: str, deployment_id: str) -> dict[str, Any]:
    body = {"deployments": {"id": {"any_": [deployment_id]}}, "limit": 200}
    async with httpx.AsyncClient() as client:
        runs = (await client.post(f"{api_url}/flow_runs/filter", json=body)).json()
    return {run["id"]: run for run in runs}


async def check(
    api_url: str, deployment_id: str, values: dict[str, str], screenshot: Path | None
) -> dict[str, Any]:
    """Fill in the form, submit it; the flow run it created, as the API returns it."""
    ui = api_url.removesuffix("/api")
    before = await _run_ids(api_url, deployment_id)
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            port = _devtools_url(proc, 60).split(":")[2].split("/")[0]
            async with httpx.AsyncClient() as client:
                targets = (await client.get(f"http://127.0.0.1:{port}/json")).json()
            target = next(t for t in targets if t["type"] == "page")
            async with websockets.connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
                page = Page(ws)
                await page.send("Page.enable")
                await page.send(
                    "Page.navigate", url=f"{ui}/v2/deployments/deployment/{deployment_id}/run"
                )
                await page.until(CLICK_SUBMIT.replace("button.click();", ""), 120, "the form")
                # the page is drawn in parts: wait for the header's flow name too
                await page.until(
                    "document.body.innerText.includes('run-comfy-deployment')", 60, "the header"
                )
                for label, value in values.items():
                    await page.until(
                        f"({SET_FIELD})({json.dumps([label, value])})", 30, f"field {label!r}"
                    )
                # Settled: every field still holds its value a second later (set again if not).
                for _ in range(SETTLE_CHECKS):
                    await asyncio.sleep(1)  # the interval between two reads of the condition
                    reset = [
                        (label, value)
                        for label, value in values.items()
                        if not await page.evaluate(f"({FIELD_HOLDS})({json.dumps([label, value])})")
                    ]
                    if not reset:
                        break
                    for label, value in reset:
                        await page.evaluate(f"({SET_FIELD})({json.dumps([label, value])})")
                else:
                    raise TimeoutError(f"the form kept resetting fields: {[r[0] for r in reset]}")
                if screenshot is not None:
                    shot = await page.send("Page.captureScreenshot", format="png")
                    screenshot.write_bytes(base64.b64decode(shot["data"]))

                async def created() -> Any:
                    runs = await _run_ids(api_url, deployment_id)
                    new = [run for run_id, run in runs.items() if run_id not in before]
                    return new[0] if new else None

                # A click while the form still validates a change is dropped (seen under load):
                # click again until a run appears, a few times.
                run = None
                for _ in range(SUBMIT_ATTEMPTS):
                    await page.until(CLICK_SUBMIT, 30, "the Submit button")
                    deadline = time.monotonic() + 20
                    while (run := await created()) is None and time.monotonic() < deadline:
                        await asyncio.sleep(0.5)  # polling a condition with a deadline
                    if run is not None:
                        break
                if run is None:
                    text = await page.evaluate("document.body.innerText")
                    raise TimeoutError(f"the form created no flow run; the page says: {text}")
                return run
        finally:
            proc.terminate()
            proc.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("api_url")
    parser.add_argument("deployment_id")
    parser.add_argument("values", nargs="*", metavar="FIELD=VALUE")
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    values = dict(v.split("=", 1) for v in args.values)
    run = asyncio.run(check(args.api_url, args.deployment_id, values, args.screenshot))
    print(json.dumps({"id": run["id"], "parameters": run["parameters"]}))


if __name__ == "__main__":
    main()
