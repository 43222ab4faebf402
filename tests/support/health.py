"""Waiting for a loopback server started in a subprocess to answer."""

from __future__ import annotations

import subprocess
import time

import httpx


def wait_for_health(proc: subprocess.Popen, port: int, timeout_s: float = 60) -> httpx.Response:
    """The first answer of http://127.0.0.1:{port}/health; fails if the process exits or `timeout_s`
    (a failure guard: start-up imports the pipeline) passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
        except httpx.TransportError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
