"""Wall time of `safemon report --since 30d` over a store of N sample_scores rows (default 10M).

Rows are generated inside the engine (INSERT ... SELECT FROM numbers()), spread over the
last 30 days across 4 targets, plus 30 days of probe runs (2 suites x 4 targets x 4 runs a
day, 200 probes each) and hourly drift checks. Prints the figures; not a timed test.

    .venv/bin/python bench/report.py --rows 10000000 --store /tmp/safemon-bench-report
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

from pipeline.report.page import write_report
from pipeline.settings import load_settings
from pipeline.store.client import open_store
from pipeline.store.migrations import migrate
from pipeline.taxonomy import HAZARDS

console = Console()


def fill(client, rows: int, now: datetime) -> None:
    hazards = "[" + ", ".join(f"'{h}'" for h in HAZARDS) + "]"
    start = int((now - timedelta(days=30)).timestamp())
    span_s = 30 * 86400
    client.command(
        f"""
        INSERT INTO sample_scores (sample_id, occurred_at, target, model_version, conversation_id, n_turns, user_text,
            assistant_text, refused, refusal_score, violation_scores, violation_score, violation_category, flagged_categories,
            jailbreak_score, injection_score)
        SELECT toString(generateUUIDv4(number)), toDateTime64({start} + intDiv(number * {span_s}, {rows}), 3, 'UTC'),
               concat('target-', toString(number % 4)), if(number * 2 < {rows}, 'v1', 'v2'), toString(number), 2,
               'user text', 'assistant text', number % 7 = 0, 0.1,
               mapFromArrays({hazards}, arrayMap(i -> toFloat32(((number * 2654435761 + i * 97) % 1000) / 1000), range({len(HAZARDS)}))),
               0.5, 'cybercrime',
               arrayFilter((h, i) -> ((number * 2654435761 + i * 97) % 1000) >= 970, {hazards}, range({len(HAZARDS)})),
               toFloat32((number * 40503 % 1000) / 1000), toFloat32((number * 9973 % 1000) / 1000)
        FROM numbers({rows})
        """,
        settings={"max_insert_threads": 2},
    )
    runs = [(t, s, d * 4 + k) for t in range(4) for s in ("core", "jailbreaks") for d in range(30) for k in range(4)]
    client.insert(
        "probe_runs",
        [[f"run-{t}-{s}-{i}", f"target-{t}", s, "1", "v1" if i < 60 else "v2", now - timedelta(hours=6 * (120 - i)),
          now - timedelta(hours=6 * (120 - i)) + timedelta(minutes=5), 200, 0, 0.0, True, "evaluated", "passed", "", now]
         for t, s, i in runs],
        column_names=["run_id", "target", "suite", "suite_version", "model_version", "started_at", "finished_at", "n_probes",
                      "n_errors", "error_rate", "healthy", "status", "outcome", "baseline_run_id", "updated_at"],
    )  # fmt: skip
    client.command(
        f"""
        INSERT INTO probe_results (run_id, run_started_at, target, suite, model_version, probe_id, category, expect, verdict, scored_at)
        SELECT run_id, started_at, target, suite, model_version, concat('p', toString(n)), {hazards}[n % {len(HAZARDS)} + 1], 'refuse',
               if((cityHash64(run_id, n) % 100) < if(model_version = 'v2', 12, 5), 'attack_success', 'refused'), now64(3)
        FROM probe_runs FINAL ARRAY JOIN range(200) AS n
        """
    )
    if client.command("EXISTS TABLE drift_results"):
        client.command(
            f"""
            INSERT INTO drift_results (target, method, window_end, status, p_value, p_adjusted, effect_size, checked_at)
            SELECT concat('target-', toString(number % 4)), ['mmd', 'c2st'][intDiv(number, 4) % 2 + 1],
                   toDateTime64({start} + intDiv(number, 8) * 3600, 3, 'UTC'), 'checked', 0.3, 0.5, 0.01, now64(3)
            FROM numbers(8 * 24 * 30)
            """
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--store", type=Path, default=Path("/tmp/safemon-bench-report"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/report.html"))
    args = parser.parse_args()
    settings = load_settings(clickhouse_dsn=f"chdb://{args.store}", clickhouse_database="bench_report")
    now = datetime.now(UTC)
    with open_store(settings) as client:
        client.command("DROP DATABASE IF EXISTS bench_report")
        client.command("CREATE DATABASE bench_report")
        migrate(client, cluster="")
        started = time.perf_counter()
        fill(client, args.rows, now)
        filled_s = time.perf_counter() - started
        counts = {t: client.command(f"SELECT count() FROM {t}") for t in ("sample_scores", "probe_results", "probe_runs")}
    console.print(f"filled {counts} in {filled_s:.1f}s")
    timings = []
    for _ in range(2):
        summary = write_report(settings, timedelta(days=30), args.out, until=now)
        timings.append(summary.seconds)
    console.print(f"safemon report --since 30d over {counts['sample_scores'] + counts['probe_results']:,} rows: "
                  f"{summary.charts} charts, {summary.rows_read:,} aggregated rows; wall {timings[0]:.1f}s (first), {timings[1]:.1f}s (second)")  # fmt: skip


if __name__ == "__main__":
    main()
