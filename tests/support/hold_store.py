"""Take an embedded store away from the pipeline for a while, as a process that is not safemon would.

`StoreHolder(path, seconds)` starts `python -m tests.support.hold_store PATH SECONDS` ahead of
time (its imports take a second); `take()` then makes it open the chDB engine on PATH directly
(not through safemon's turn-taking lock file, so safemon gets its turn and then finds the
engine locked), waiting for a gap between a busy worker's batches, and returns once it holds
the engine. It keeps the engine open for SECONDS, then closes it and exits.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class StoreHolder:
    """A process, started ahead, that holds an embedded store's engine for `seconds` when told."""

    def __init__(self, path: str | Path, seconds: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.hold_store", str(path), str(seconds)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._expect("ready")

    def take(self) -> float:
        """Hold the store from now on; returns the time (epoch seconds) it was taken."""
        assert self.process.stdin is not None
        self.process.stdin.write("take\n")
        self.process.stdin.flush()
        self._expect("held")
        return time.time()

    def holding(self) -> bool:
        return self.process.poll() is None

    def wait(self) -> float:
        """Wait until it let go; returns the time (epoch seconds) it did."""
        assert self.process.wait(timeout=600) == 0, "the store holder failed"
        return time.time()

    def _expect(self, word: str) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line == word, f"the store holder said {line!r}, not {word!r}"


def main(path: str, seconds: float) -> int:
    import clickhouse_connect

    print("ready", flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + 120
    while True:
        try:
            client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
            client.command("SELECT 1")
            break
        except Exception as exc:  # the pipeline holds it between its opens and closes
            if time.monotonic() > deadline:
                print(f"could not open {path}: {exc}", flush=True)
                return 1
            time.sleep(0.01)
    print("held", flush=True)
    time.sleep(seconds)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2])))
