"""Headless Chromium over the DevTools protocol: the one browser the tests and scripts drive.

Debian's ``chromium`` (never a downloaded browser), a fresh profile per launch, loopback only
(every other host fails to resolve), and a page session over ``websockets`` (no other dependency).
Used by the deployment run-form check (``run_form.py``), the frontend oracle
(``frontend_oracle.py``) and the screenshot scripts (``scripts/ui_screenshots.py``,
``scripts/preview_screenshots.py``)::

    async with headless_chromium(window=(1280, 900)) as page:
        await page.open("http://127.0.0.1:4200/runs", "Runs")
        await page.shoot(Path("runs.png"))
"""

from __future__ import annotations

import asyncio
import base64
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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import websockets

CHROMIUM = (
    os.environ.get("PREFECT_COMFY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    # Loopback only: everything else fails to resolve.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)


class BrowserError(RuntimeError):
    """The page failed: an exception in the page, a timeout, a dead browser."""


class Page:
    """A DevTools protocol session on one page target.

    Commands are answered by id (a reader task routes each answer to its caller), so several may be
    in flight; the page's console errors and warnings are kept in ``console``.
    """

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
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
                    future.set_exception(BrowserError("the browser closed the DevTools socket"))

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command; its result."""
        ident = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        msg = await future
        if "error" in msg:
            raise BrowserError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    async def evaluate(self, expression: str, timeout: float = 120.0) -> Any:
        """The value of ``expression`` in the page (a promise is awaited).

        Raises:
            BrowserError: the expression threw, or the page did not answer within ``timeout``.
        """
        try:
            result = await asyncio.wait_for(
                self.call(
                    "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
                ),
                timeout,
            )
        except TimeoutError:
            raise BrowserError(f"the page did not answer within {timeout:.0f} s") from None
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"in the page: {str(text)[:1500]}")
        return result["result"].get("value")

    async def until(self, expression: str, timeout: float, what: str) -> Any:
        """Evaluate ``expression`` until it is truthy (an exception counts as not yet)."""
        deadline = time.monotonic() + timeout
        last_error: BrowserError | None = None
        while True:
            try:
                value = await self.evaluate(expression, timeout=max(1.0, timeout))
            except BrowserError as exc:
                value, last_error = None, exc
            if value:
                return value
            if time.monotonic() > deadline:
                why = f" (last: {last_error})" if last_error else ""
                raise TimeoutError(f"the page never showed {what} within {timeout:g} s{why}")
            await asyncio.sleep(0.25)  # polling a condition with a deadline

    async def open(self, url: str, text: str, timeout: float = 30.0) -> None:
        """Navigate to ``url`` and wait until the page shows ``text``."""
        await self.call("Page.navigate", url=url)
        await self.until(
            f"document.body && document.body.innerText.includes({json.dumps(text)})", timeout, text
        )

    async def click_text(self, text: str) -> None:
        """Click the innermost element whose text is exactly ``text``."""
        clicked = await self.evaluate(
            "(() => { const el = [...document.querySelectorAll('body *')]"
            f".filter(e => e.textContent.trim() === {json.dumps(text)}).pop();"
            " if (!el) return false; el.click(); return true; })()"
        )
        if not clicked:
            raise BrowserError(f"no {text!r} to click")

    async def shoot(self, path: Path) -> None:
        """Save a PNG screenshot of the page."""
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


class Browser:
    """One launched Chromium: its process, profile and first page (see :func:`headless_chromium`)."""

    def __init__(self) -> None:
        self.version: str | None = None
        self.page: Page | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._profile: str | None = None
        self._ws: Any = None

    async def start(self, window: tuple[int, int], timeout: float) -> Page:
        if not Path(CHROMIUM).exists():
            raise BrowserError(f"no browser at {CHROMIUM}: apt-get install chromium")
        self._profile = tempfile.mkdtemp(prefix="prefect-comfy-chromium-")
        self._process = subprocess.Popen(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--window-size={window[0]},{window[1]}",
                f"--user-data-dir={self._profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        port_file = Path(self._profile) / "DevToolsActivePort"
        while True:
            if self._process.poll() is not None:
                raise BrowserError(f"{CHROMIUM} exited with {self._process.returncode}")
            if time.monotonic() > deadline:
                raise BrowserError(f"{CHROMIUM} did not open its DevTools port in {timeout:g} s")
            lines = port_file.read_text().splitlines() if port_file.exists() else []
            if len(lines) >= 2:
                port = int(lines[0])
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version") as r:
                        self.version = json.load(r).get("Browser")
                    break
            await asyncio.sleep(0.1)  # polling a condition with a deadline
        self._ws = await websockets.connect(
            pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30
        )
        self.page = Page(self._ws)
        await self.page.call("Runtime.enable")
        await self.page.call("Page.enable")
        return self.page

    async def close(self) -> None:
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


@contextlib.asynccontextmanager
async def headless_chromium(
    window: tuple[int, int] = (1280, 1024), timeout: float = 60.0
) -> AsyncIterator[Page]:
    """A fresh headless Chromium, its first page ready; the browser is stopped on exit."""
    browser = Browser()
    try:
        yield await browser.start(window, timeout)
    finally:
        await browser.close()
