"""Take an embedded store away from the pipeline for a while, as a process that is not safemon would.

`python -m tests.support.hold_store PATH SECONDS` opens the chDB engine on PATH directly (not
through safemon's turn-taking lock file, so safemon gets its turn and then finds the engine
locked), waiting for a gap between two batches of a busy worker; prints `held`, keeps the
engine open for SECONDS, then closes it and prints `released`.
"""

from __future__ import annotations

import sys
import time

import clickhouse_connect


def main(path: str, seconds: float) -> int:
    deadline = time.monotonic() + 120
    while True:
        try:
            client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
            client.command("SELECT 1")
            break
        except Exception as exc:  # the worker holds it between its batches' opens and closes
            if time.monotonic() > deadline:
                print(f"could not open {path}: {exc}", flush=True)
                return 1
            time.sleep(0.01)
    print("held", flush=True)
    time.sleep(seconds)
    client.close()
    print("released", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2])))
