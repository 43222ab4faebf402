"""A soak: the stream at a steady rate with 1% poison for a long while, watching the worker's memory.

    .venv/bin/python bench/soak.py                          # 20 minutes at 40 messages/s
    .venv/bin/python bench/soak.py --minutes 2 --sample-s 10   # the smoke the test suite runs

`safemon replay` produces a file of distinct short samples with one poison message in every
100 (half bad JSON, half breaking the contract) at `--rate`, through its idempotent acks=all
producer, while one stream worker (its own process, as deployed) consumes into an embedded
store. Every `--sample-s` seconds (a minute by default) the worker's resident memory, what it
has committed and the group's lag are printed. At the end replay stops, the worker drains what
was acknowledged and stops, and the store and the DLQ are compared with the file: stored,
rejected and lost counts. Memory is flat when the least-squares slope of RSS against time,
after `--warm-up-s`, has a 95% interval that holds 0 or stays small: the slope and its
interval are printed in MiB per hour. Exits 1 if anything was lost or doubled.

A broker is started from deploy/kafka unless SAFEMON_KAFKA_BOOTSTRAP names one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: E402
from rich.table import Table  # noqa: E402
from scipy import stats  # noqa: E402

from pipeline.settings import load_settings  # noqa: E402
from tests.support.kafka_broker import bootstrap_for, create_topic  # noqa: E402
from tests.support.replay_run import end_offsets, outcome, start_replay, stop_replay, wait_drained, write_replay_file  # noqa: E402
from tests.support.stream_worker import committed_offsets, start_worker, worker_env  # noqa: E402

console = Console()


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def slope_per_hour(times_s: list[float], rss: list[float]) -> tuple[float, float, float]:
    """Least-squares slope of RSS (MiB) against time, per hour, with its 95% interval."""
    fit = stats.linregress(times_s, rss)
    half = stats.t.ppf(0.975, len(times_s) - 2) * fit.stderr
    return fit.slope * 3600, (fit.slope - half) * 3600, (fit.slope + half) * 3600


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=40.0, help="messages per second from safemon replay")
    parser.add_argument("--poison-every", type=int, default=100, help="one poison message after every N samples (100: 1%%)")
    parser.add_argument("--sample-s", type=float, default=60.0, help="seconds between memory and lag samples")
    parser.add_argument("--warm-up-s", type=float, default=None, help="left out of the slope (default: 2 samples)")
    args = parser.parse_args()
    warm_up_s = args.warm_up_s if args.warm_up_s is not None else 2 * args.sample_s

    work = Path(tempfile.mkdtemp(prefix="safemon-soak-"))
    with bootstrap_for(work) as bootstrap:
        topic = f"soak-{uuid.uuid4().hex[:8]}"
        group = f"group-{topic}"
        create_topic(bootstrap, topic, 4)
        settings = load_settings(clickhouse_dsn=f"chdb://{work / 'clickhouse'}", clickhouse_database="soak")
        file = work / "samples.jsonl"
        kinds = write_replay_file(file, int(args.rate * args.minutes * 60 * 1.2) + 100, args.poison_every)
        env = worker_env(settings, bootstrap=bootstrap, topic=topic, group=group, stream_batch_size=256, stream_batch_timeout_s=1)
        worker = start_worker(env, work / "worker.log")
        worker.wait_for("stream.subscribed", timeout=300)  # model loaded, store migrated
        replay = start_replay(env, file, args.rate)
        started = time.monotonic()
        table = Table(
            "t (s)", "worker RSS MiB", "committed", "lag", title=f"soak: {args.rate:g}/s for {args.minutes:g} min, 1 poison in {args.poison_every + 1}"
        )
        samples: list[tuple[float, float]] = []
        lag = 0
        try:
            with Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=console
            ) as progress:
                bar = progress.add_task("soak", total=args.minutes * 60, status="")
                next_sample = started + args.sample_s
                while (now := time.monotonic()) - started < args.minutes * 60:
                    if worker.process.poll() is not None:
                        raise RuntimeError(f"the worker exited:\n{worker.tail()}")
                    if now >= next_sample:
                        next_sample += args.sample_s
                        rss = rss_mib(worker.pid)
                        committed = sum(committed_offsets(bootstrap, group, topic).values())
                        lag = sum(end_offsets(bootstrap, topic).values()) - committed
                        samples.append((now - started, rss))
                        table.add_row(f"{now - started:.0f}", f"{rss:.0f}", f"{committed:,}", f"{lag:,}")
                        progress.update(bar, status=f"RSS {rss:.0f} MiB, committed {committed:,}, lag {lag:,}")
                    progress.update(bar, completed=now - started)
                    time.sleep(0.5)
        finally:
            acknowledged = stop_replay(replay)
        lag_at_end = lag
        wait_drained(bootstrap, group, topic)
        if worker.terminate() != 0:
            raise RuntimeError(f"the worker did not stop cleanly:\n{worker.tail()}")
        result = outcome(settings, bootstrap, topic, kinds, acknowledged)

    console.print(table)
    steady = [(t, r) for t, r in samples if t >= warm_up_s]
    if len(steady) >= 3:
        slope, low, high = slope_per_hour([t for t, _ in steady], [r for _, r in steady])
        console.print(
            f"worker RSS slope after {warm_up_s:.0f}s: {slope:+.1f} MiB/h (95% interval {low:+.1f} .. {high:+.1f}) "
            f"over {len(steady)} samples, {steady[0][1]:.0f} -> {steady[-1][1]:.0f} MiB"
        )
    else:
        console.print(f"[yellow]only {len(steady)} memory samples after the warm-up: no slope[/]")
    console.print(f"lag at the end of the run: {lag_at_end:,} records")
    console.print(
        f"stored {result.rows:,} ({result.distinct:,} distinct), rejected {result.rejected:,} of {result.poison:,} poison, "
        f"lost {result.lost}, unexpected {result.unexpected}; DLQ {result.dead_letters:,} records at {result.dead_positions:,} positions"
    )
    console.print("exactly once: yes" if result.exactly_once else "[red]exactly once: NO[/]")
    return 0 if result.exactly_once else 1


if __name__ == "__main__":
    sys.exit(main())
