"""Fill in and submit a deployment's custom-run form in headless Chromium, as a person would.

    python -m tests.support.run_form API_URL DEPLOYMENT_ID FIELD=VALUE... [--screenshot PNG]

Opens ``<ui>/v2/deployments/deployment/<id>/run`` (Prefect's default UI) over the Chrome DevTools
protocol (tests/support/browser.py), types each ``VALUE`` into the field whose label starts with ``FIELD`` (a text area,
number or text input), optionally saves a screenshot of the filled-in form, presses *Submit*, and
prints the flow run the form created (id and parameters), as JSON. Exit code 1 if no run appeared.

It shows that the form Prefect draws from a prefect-comfy deployment's schema produces the run
parameters the flow expects (tests/integration/test_deploy_prefect.py), and takes the screenshot of
docs/workflows.md. Needs Debian's ``chromium``; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.browser import headless_chromium

SUBMIT_ATTEMPTS = 4

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
    async with headless_chromium(window=(1280, 1500)) as page:
        await page.call("Page.navigate", url=f"{ui}/v2/deployments/deployment/{deployment_id}/run")
        await page.until(CLICK_SUBMIT.replace("button.click();", ""), 120, "the form")
        # the page is drawn in parts: wait for the header's flow name too
        await page.until(
            "document.body.innerText.includes('run-comfy-deployment')", 60, "the header"
        )
        for label, value in values.items():
            await page.until(f"({SET_FIELD})({json.dumps([label, value])})", 30, f"field {label!r}")
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
            await page.shoot(screenshot)

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
