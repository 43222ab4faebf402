"""Take an embedded store away from the pipeline for a while, as a misbehaving process would.

`StoreHolder(path, seconds)` starts `python -m tests.support.hold_store PATH SECONDS` ahead of
time (its imports take a second); `take()` then makes it ask for its turn on PATH the way
safemon's processes do (a stream worker holding the store gives it up at its next batch),
open the chDB engine, and give the turn back while keeping the engine open: safemon gets its
turn and then finds the engine locked. `take()` returns once it holds the engine; it keeps it
for SECONDS, then closes it and exits.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.support.processes import track

ROOT = Path(__file__).resolve().parents[2]


class StoreHolder:
    """A process, started ahead, that holds an embedded store's engine for `seconds` when told."""

    def __init__(self, path: str | Path, seconds: float) -> None:
        self.process = track(
            subprocess.Popen(
                [sys.executable, "-m", "tests.support.hold_store", str(path), str(seconds)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
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
        """Wait until it let go; returns the time (epoch seconds) it closed the engine.

        That is the holder's own clock reading, not when this call returns: the pipeline may
        take the store while the holder process is still exiting, or before a caller polling
        `holding()` notices.
        """
        released = float(self._expect("released"))
        assert self.process.wait(timeout=600) == 0, "the store holder failed"
        return released

    def _expect(self, word: str) -> str:
        """Read the holder's next line, which must start with `word`; the rest of it."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        said, _, rest = line.partition(" ")
        assert said == word, f"the store holder said {line!r}, not {word!r}"
        return rest


def main(path: str, seconds: float) -> int:
    import clickhouse_connect

    from pipeline.store.client import embedded_turn

    print("ready", flush=True)
    sys.stdin.readline()
    with embedded_turn(f"chdb://{path}", 120, time.monotonic() + 120):
        client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
        client.command("SELECT 1")
    print("held", flush=True)
    time.sleep(seconds)
    client.close()
    print(f"released {time.time()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2])))
