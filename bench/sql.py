"""The SQL cookbook at scale: 10M probe results and 10M sample scores on the embedded engine.

Generates the history in batches (progress bars), then runs every cookbook recipe three
times and prints the median and best wall time against the 1 s target, beside a full
scan of each table in the same run as the baseline.

    .venv/bin/python bench/sql.py --probe-rows 10000000 --sample-rows 10000000
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from synthetic import fill_alerts, fill_drift, fill_probes, fill_samples

from pipeline.settings import load_settings
from pipeline.store.client import open_store
from pipeline.store.cookbook import all_recipes, run_recipe

console = Console()
OVERRIDES = {"asr_by_day": {"days": 90}}  # the question: ASR by category per day for 90 days


def _timed(action, repeats: int = 3) -> tuple[float, float, int]:
    times, rows = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        rows = action()
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--probe-rows", type=int, default=10_000_000)
    parser.add_argument("--sample-rows", type=int, default=10_000_000)
    parser.add_argument("--store", type=Path, default=Path("/tmp/safemon-bench-sql"))
    parser.add_argument("--reuse", action="store_true", help="keep an existing database of the same size")
    args = parser.parse_args()
    settings = load_settings(clickhouse_dsn=f"chdb://{args.store}", clickhouse_database="bench_sql")
    now = datetime.now(UTC)
    with open_store(settings, migrated=True) as client:
        have = client.command("SELECT count() FROM probe_results")
        if not (args.reuse and have == args.probe_rows):
            for table in ("probe_results", "probe_runs", "probe_run_categories", "probe_latest_verdicts", "sample_scores", "drift_results", "alerts"):
                client.command(f"TRUNCATE TABLE {table}")
            started = time.perf_counter()
            with Progress(console=console) as progress:
                fill_probes(client, args.probe_rows, now, 90, progress)
                fill_samples(client, args.sample_rows, now, 30, progress)
            fill_drift(client, now, 30)
            fill_alerts(client, now)
            client.command("OPTIMIZE TABLE probe_results FINAL")
            client.command("OPTIMIZE TABLE sample_scores FINAL")
            console.print(f"generated in {time.perf_counter() - started:.0f}s")

        table = Table("query", "rows", "median s", "best s", "x full scan", "≤ 1 s", title="cookbook over the embedded engine")
        baselines = {}
        # A full read of the table's key columns: what any unindexed question would cost.
        for name, key in (("probe_results", "run_id, probe_id"), ("sample_scores", "sample_id")):
            median, best, _ = _timed(lambda n=name, k=key: client.query(f"SELECT sum(cityHash64({k})) FROM {n}").row_count)
            baselines[name] = median
            table.add_row(f"[dim]full scan of {name}[/]", "1", f"{median:.3f}", f"{best:.3f}", "1.00", "")
        for recipe in all_recipes():
            params = recipe.parameters(OVERRIDES.get(recipe.name))
            median, best, rows = _timed(lambda r=recipe, p=params: len(run_recipe(client, r.name, p)[1]))
            base = baselines["sample_scores" if "sample_scores" in recipe.sql or "violation" in recipe.sql else "probe_results"]
            table.add_row(recipe.name, str(rows), f"{median:.3f}", f"{best:.3f}", f"{median / base:.2f}", "yes" if median <= 1 else "[red]no[/]")
        sizes = client.query(
            "SELECT table, sum(rows), formatReadableSize(sum(bytes_on_disk)) FROM system.parts "
            "WHERE active AND database = 'bench_sql' GROUP BY table ORDER BY table"
        ).result_rows
    console.print(table)
    console.print("table sizes: " + ", ".join(f"{t} {r:,} rows {s}" for t, r, s in sizes))


if __name__ == "__main__":
    main()
