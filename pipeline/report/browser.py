"""Headless Chromium: load a report as a person's browser would, screenshot it, read its DOM.

Used by the report's tests and available to anyone who wants a PNG of a report (for a
wiki page or a ticket). Chromium runs with a fresh profile, no network services and no
sandbox (it is usually started as root in containers and CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
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
    with tempfile.TemporaryDirectory(prefix="safemon-chromium-") as profile:
        command = [binary, *_FLAGS, f"--user-data-dir={profile}", *args]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise BrowserError(f"chromium did not finish within {timeout_s:.0f}s") from None


def render_page(page: Path, screenshot: Path, *, width: int = 1280, height: int = 2400, timeout_s: float = 90.0) -> RenderedPage:
    """Load `page` in headless Chromium: save a `width` x `height` screenshot and return the DOM."""
    binary = find_chromium()
    if binary is None:
        raise BrowserError(f"no Chromium found (tried {', '.join(CANDIDATES)}; set SAFEMON_CHROMIUM); install it with deploy/chromium.sh")
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
