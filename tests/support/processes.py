"""Subprocesses a test starts must not outlive it.

A worker left running after a failed test keeps the process's embedded store locked, and every
later test on that store then fails on the lock instead of on its own behaviour. `track` records
a subprocess; the autouse fixture in tests/conftest.py kills whatever is still running when the
test ends (a passing test has already stopped its own).
"""

from __future__ import annotations

import subprocess

_started: list[subprocess.Popen] = []


def track(process: subprocess.Popen) -> subprocess.Popen:
    _started.append(process)
    return process


def kill_leftovers() -> list[int]:
    """SIGKILL and reap every tracked subprocess still running; their pids."""
    killed = []
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
            killed.append(process.pid)
    return killed
