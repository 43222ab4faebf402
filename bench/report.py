"""Wall time of `safemon report --since 30d` over 10M probe results and 10M sample scores.

Rows are generated inside the engine by bench/synthetic.py, spread over the last 30 days:
probe runs of 200 probes, sample scores, and hourly drift checks. The report is written
three times; the median is the figure, split into reading the history (the queries) and
drawing the page. Prints the figures; not a timed test.

    .venv/bin/python bench/report.py --reuse
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from synthetic import fill_alerts, fill_drift, fill_probes, fill_samples

from pipeline.report.page import write_report
from pipeline.settings import load_settings
from pipeline.store.client import open_store

console = Console()
RUNS = 3
TARGET_S = 5.0


def _fill(settings, args, now: datetime) -> None:
    with open_store(settings) as client:
        client.command("DROP DATABASE IF EXISTS bench_report")
        client.command("CREATE DATABASE bench_report")
    with open_store(settings, migrated=True) as client:
        started = time.perf_counter()
        with Progress(console=console) as progress:
            fill_probes(client, args.probe_rows, now, 30, progress)
            fill_samples(client, args.sample_rows, now, 30, progress)
        fill_drift(client, now, 30)
        fill_alerts(client, now)
        client.command("OPTIMIZE TABLE probe_results FINAL")
        client.command("OPTIMIZE TABLE sample_scores FINAL")
        # The generated history ends at `now`; a reused store is reported up to the same instant.
        client.command("CREATE TABLE bench_generated (at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY tuple()")
        client.insert("bench_generated", [[now]], column_names=["at"])
        console.print(f"generated in {time.perf_counter() - started:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sample-rows", "--rows", type=int, default=10_000_000, help="sample_scores rows")
    parser.add_argument("--probe-rows", type=int, default=10_000_000, help="probe_results rows (runs of 200)")
    parser.add_argument("--store", type=Path, default=Path("/tmp/safemon-bench-report"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/report.html"))
    parser.add_argument("--reuse", action="store_true", help="keep an existing database of the same size")
    parser.add_argument("--screenshot", type=Path, help="also save a PNG of the report (needs Chromium), e.g. tests/artifacts/report_10m.png")
    args = parser.parse_args()
    settings = load_settings(clickhouse_dsn=f"chdb://{args.store}", clickhouse_database="bench_report")
    counts, until = {}, None
    with open_store(settings) as client:
        if client.command("EXISTS TABLE bench_report.bench_generated"):
            counts = {t: client.command(f"SELECT count() FROM bench_report.{t}") for t in ("sample_scores", "probe_results")}
            until = client.query("SELECT max(at) FROM bench_report.bench_generated").result_rows[0][0].replace(tzinfo=UTC)
    if not (args.reuse and counts == {"sample_scores": args.sample_rows, "probe_results": args.probe_rows}):
        until = datetime.now(UTC)
        _fill(settings, args, until)
    with open_store(settings, migrated=True) as client:  # a reused store gets any newer migration
        counts = {t: client.command(f"SELECT count() FROM {t}") for t in ("sample_scores", "probe_results", "probe_runs")}
    summaries = [write_report(settings, timedelta(days=30), args.out, until=until) for _ in range(RUNS)]
    table = Table("run", "total s", "query s", "draw s", title=f"safemon report --since 30d, {RUNS} runs")
    for number, summary in enumerate(summaries, start=1):
        table.add_row(str(number), f"{summary.seconds:.2f}", f"{summary.query_seconds:.2f}", f"{summary.draw_seconds:.2f}")
    median = statistics.median(s.seconds for s in summaries)
    query = statistics.median(s.query_seconds for s in summaries)
    draw = statistics.median(s.draw_seconds for s in summaries)
    table.add_row("median", f"{median:.2f}", f"{query:.2f}", f"{draw:.2f}", style="bold")
    console.print(table)
    console.print(
        f"over {counts['probe_results']:,} probe results ({counts['probe_runs']:,} runs) and {counts['sample_scores']:,} sample scores: "
        f"{summaries[-1].charts} charts, {summaries[-1].rows_read:,} aggregated rows, {args.out.stat().st_size / 1e6:.1f} MB page; "
        f"median {median:.2f}s (query {query:.2f}s, draw {draw:.2f}s) {'≤' if median <= TARGET_S else '>'} {TARGET_S:g}s"
    )
    if args.screenshot:
        from pipeline.lab.browser import render_page

        rendered = render_page(args.out, args.screenshot, width=1280, height=2600)
        console.print(f"screenshot: {rendered.screenshot}")


if __name__ == "__main__":
    main()
