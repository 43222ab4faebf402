"""Wall time of `safemon report --since 30d` over a store of N sample_scores rows (default 10M).

Rows are generated inside the engine by bench/synthetic.py, spread over the last 30 days:
sample scores, probe runs of 200 probes, and hourly drift checks. Prints the figures;
not a timed test.

    .venv/bin/python bench/report.py --rows 10000000 --store /tmp/safemon-bench-report
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from synthetic import fill_drift, fill_probes, fill_samples

from pipeline.report.page import write_report
from pipeline.settings import load_settings
from pipeline.store.client import open_store

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000, help="sample_scores rows")
    parser.add_argument("--probe-rows", type=int, default=200_000, help="probe_results rows (1,000 runs of 200)")
    parser.add_argument("--store", type=Path, default=Path("/tmp/safemon-bench-report"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/report.html"))
    args = parser.parse_args()
    settings = load_settings(clickhouse_dsn=f"chdb://{args.store}", clickhouse_database="bench_report")
    now = datetime.now(UTC)
    with open_store(settings) as client:
        client.command("DROP DATABASE IF EXISTS bench_report")
        client.command("CREATE DATABASE bench_report")
    with open_store(settings, migrated=True) as client:
        started = time.perf_counter()
        with Progress(console=console) as progress:
            fill_probes(client, args.probe_rows, now, 30, progress)
            fill_samples(client, args.rows, now, 30, progress)
        fill_drift(client, now, 30)
        filled_s = time.perf_counter() - started
        counts = {t: client.command(f"SELECT count() FROM {t}") for t in ("sample_scores", "probe_results", "probe_runs")}
    console.print(f"filled {counts} in {filled_s:.1f}s")
    timings = []
    for _ in range(2):
        summary = write_report(settings, timedelta(days=30), args.out, until=now)
        timings.append(summary.seconds)
    console.print(
        f"safemon report --since 30d over {counts['sample_scores'] + counts['probe_results']:,} rows: "
        f"{summary.charts} charts, {summary.rows_read:,} aggregated rows; wall {timings[0]:.1f}s (first), {timings[1]:.1f}s (second)"
    )


if __name__ == "__main__":
    main()
