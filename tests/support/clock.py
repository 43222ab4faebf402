"""A clock the test moves, for code that reads `time.monotonic()` and sleeps on `time.sleep()`.

The production modules call the `time` module directly, so a test substitutes the module's
`time` name (monkeypatch.setattr(module, "time", clock)); anything else the module reads from
`time` still comes from the real one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class FakeClock:
    """Monotonic time that moves only when advanced or slept on; sleeping never blocks."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._alarms: list[tuple[float, Callable[[], None]]] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [alarm for alarm in self._alarms if alarm[0] <= self.now]
        self._alarms = [alarm for alarm in self._alarms if alarm[0] > self.now]
        for _, action in due:
            action()

    def at(self, seconds_from_now: float, action: Callable[[], None]) -> None:
        """Run `action` once the clock has moved `seconds_from_now` on."""
        self._alarms.append((self.now + seconds_from_now, action))

    def __getattr__(self, name: str) -> Any:
        # Everything else a module reads from `time` (time(), perf_counter(), ...) stays real.
        return getattr(time, name)
