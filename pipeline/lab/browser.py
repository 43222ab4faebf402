"""Headless Chromium: load a report as a person's browser would, screenshot it, read its DOM.

Used by the report's tests and available to anyone who wants a PNG of a report (for a
wiki page or a ticket), and by the Airflow test to screenshot the UI as a logged-in user
(`screenshot_url`, through the DevTools protocol, which can set the login cookie).
Chromium runs with a fresh profile, no network services and no sandbox (it is usually
started as root in containers and CI).
"""

from __future__ import annotations

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
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger()

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


class BrowserError(RuntimeError):
    """Chromium is missing, or it failed to load the page."""


@dataclass(frozen=True)
class RenderedPage:
    """The page's DOM after its scripts ran, and where its screenshot was saved."""

    dom: str
    screenshot: Path


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable: `SAFEMON_CHROMIUM` if set, else the first on PATH."""
    explicit = os.environ.get("SAFEMON_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else shutil.which(explicit)
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def _run(binary: str, args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="safemon-chromium-", ignore_cleanup_errors=True) as profile:
        command = [binary, *_FLAGS, f"--user-data-dir={profile}", *args]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise BrowserError(f"chromium did not finish within {timeout_s:.0f}s") from None


def _chromium() -> str:
    binary = find_chromium()
    if binary is None:
        raise BrowserError(f"no Chromium found (tried {', '.join(CANDIDATES)}; set SAFEMON_CHROMIUM); install it with deploy/chromium.sh")
    return binary


def render_page(page: Path, screenshot: Path, *, width: int = 1280, height: int = 2400, timeout_s: float = 90.0) -> RenderedPage:
    """Load `page` in headless Chromium: save a `width` x `height` screenshot and return the DOM."""
    binary = _chromium()
    url = page.resolve().as_uri()
    # Virtual time lets the load event and its script finish before the DOM is dumped.
    timing = "--virtual-time-budget=5000"
    dumped = _run(binary, [timing, "--dump-dom", url], timeout_s)
    if dumped.returncode != 0 or "<html" not in dumped.stdout:
        raise BrowserError(f"chromium --dump-dom failed ({dumped.returncode}): {dumped.stderr[-500:]}")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    shot = _run(binary, [timing, f"--window-size={width},{height}", f"--screenshot={screenshot.resolve()}", url], timeout_s)
    if shot.returncode != 0 or not screenshot.exists():
        raise BrowserError(f"chromium --screenshot failed ({shot.returncode}): {shot.stderr[-500:]}")
    log.info("browser.rendered", page=str(page), screenshot=str(screenshot), dom_chars=len(dumped.stdout))
    return RenderedPage(dom=dumped.stdout, screenshot=screenshot)


def screenshot_url(
    url: str,
    screenshot: Path,
    *,
    cookies: dict[str, str] | None = None,
    width: int = 1600,
    height: int = 1000,
    settle_s: float = 5.0,
    timeout_s: float = 90.0,
) -> Path:
    """Open `url` with `cookies` set (a login), let its scripts render for `settle_s`, save a PNG."""
    import httpx
    from websockets.sync.client import connect

    # Chromium's helper processes may still write to the profile after the browser exits: they
    # are stopped with it (one process group), and a file they leave never fails the screenshot.
    with tempfile.TemporaryDirectory(prefix="safemon-chromium-", ignore_cleanup_errors=True) as profile:
        command = [_chromium(), *_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"]
        browser = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port = _devtools_port(Path(profile) / "DevToolsActivePort", browser, timeout_s)
            page = next(t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json() if t["type"] == "page")
            with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout_s) as socket:
                ids = itertools.count(1)

                def call(method: str, **params: object) -> dict:
                    sent = next(ids)
                    socket.send(json.dumps({"id": sent, "method": method, "params": params}))
                    while True:
                        reply = json.loads(socket.recv(timeout=timeout_s))
                        if reply.get("id") == sent:
                            if "error" in reply:
                                raise BrowserError(f"{method}: {reply['error']}")
                            return reply.get("result", {})

                for name, value in (cookies or {}).items():
                    call("Network.setCookie", name=name, value=value, url=url)
                call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
                call("Page.navigate", url=url)
                time.sleep(settle_s)  # a single-page app renders after load; there is no event for "done"
                data = call("Page.captureScreenshot", format="png")["data"]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(browser.pid, signal.SIGTERM)
            browser.wait(timeout=30)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.write_bytes(base64.b64decode(data))
    log.info("browser.screenshot", url=url, screenshot=str(screenshot))
    return screenshot


def _devtools_port(port_file: Path, browser: subprocess.Popen, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if browser.poll() is not None:
            raise BrowserError(f"chromium exited {browser.returncode} before its DevTools port opened")
        if port_file.exists() and (first := port_file.read_text().split("\n")[0].strip()):
            return int(first)
        time.sleep(0.1)
    raise BrowserError(f"chromium opened no DevTools port within {timeout_s:.0f}s")
