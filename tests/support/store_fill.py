"""A store filled the way people meet it: the demo's probe runs and alert, scored stream
samples, rejected messages and drift checks. The cookbook and report tests read it."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

from rich.console import Console

from pipeline.records import utc_now
from pipeline.settings import Settings, load_settings
from pipeline.store.client import open_store
from pipeline.store.lag import LagObservation, write_lag
from pipeline.store.migrations import migrate
from tests.support.audit_rows import insert_sample_audits
from tests.support.sample_rows import insert_scores

DEMO_DATABASE = "safemon_demo"
DRIFT_METHODS = ("mmd", "c2st")


def _drift_columns(client) -> dict[str, str]:
    """The drift table's columns the report reads, by role (from the history module's choices)."""
    from pipeline.store import history

    names = {r[0] for r in client.query("SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'drift_results'").result_rows}
    return {
        "at": next(c for c in history._DRIFT_TIME if c in names),
        "p": next(c for c in history._DRIFT_P if c in names),
        "effect": next(c for c in history._DRIFT_EFFECT if c in names),
    }


def fill_store(store_path: Path) -> Settings:
    """The demo's two probe runs and alert, plus six hours of scored stream samples (some audited by
    a judge), a few rejected messages and drift checks, in `safemon_demo` of the session's store. Filled once
    per process."""
    from pipeline.demo import run_demo

    settings = load_settings(clickhouse_dsn=f"chdb://{store_path}", clickhouse_database=DEMO_DATABASE, clickhouse_lock_timeout_s=30)
    with open_store(settings) as client:
        filled = client.command(f"EXISTS TABLE {DEMO_DATABASE}.filled_for_tests")
    if filled:
        return settings
    assert run_demo(settings, Console(file=io.StringIO())) == 0
    now = utc_now()
    with open_store(settings) as client:
        migrate(client)
        insert_scores(client, "prod-chat", now - timedelta(hours=6), 6 * 60 - 1, 1800, {"cybercrime": 0.08, "hate": 0.03}, seed=1)
        # Samples of the same six hours the judge also rated (the agreement audit): it agrees on 90%.
        insert_sample_audits(client, "prod-chat", now - timedelta(hours=6), (6 * 60 - 1) / 60, 120, 0.9)
        client.insert(
            "rejected_samples",
            [["conversations.v1", 0, i, "schema", "missing sample_id", "", "{}", 2, 1, now - timedelta(minutes=i)] for i in range(5)],
            column_names=["source_topic", "source_partition", "source_offset", "code", "reason", "sample_id", "raw", "raw_bytes", "attempt", "rejected_at"],
        )
        if not client.command("EXISTS TABLE drift_results"):
            # Until the drift migration lands: a stand-in with the columns the report reads.
            client.command(
                "CREATE TABLE drift_results (window_end DateTime64(3, 'UTC'), target LowCardinality(String), "
                "method LowCardinality(String), p_value Float64, effect_size Float64) ENGINE = MergeTree ORDER BY (target, method, window_end)"
            )
            client.command(
                "CREATE VIEW latest_drift AS SELECT target, method, argMax(p_value, window_end) AS p_value, "
                "argMax(effect_size, window_end) AS effect_size, max(window_end) AS last_window_end FROM drift_results GROUP BY target, method"
            )
        cols = _drift_columns(client)
        rows = [
            ["prod-chat", method, now - timedelta(hours=h), 0.5 / (1 + 2 * (6 - h)) if method == "mmd" else 0.4, 0.01 * (7 - h)]
            for h in range(6, 0, -1)
            for method in DRIFT_METHODS
        ]
        names = ["target", "method", cols["at"], cols["p"], cols["effect"]]
        if client.command("SELECT count() FROM system.columns WHERE database = currentDatabase() AND table = 'drift_results' AND name = 'status'"):
            rows, names = [[*r, "checked"] for r in rows], [*names, "status"]
        client.insert("drift_results", rows, column_names=names)
        # Six hours of one group's lag on two partitions, written every 30 s: 20 messages/s in
        # on each, consumed at 19/s on partition 0 (falling behind) and keeping up on 1.
        write_lag(
            client,
            [
                LagObservation(
                    now - timedelta(seconds=30 * k),
                    "safemon-stream",
                    "conversations.v1",
                    p,
                    20 * (720 - k) * 30,
                    20 * (720 - k) * 30 - (720 - k) * 30 * (1 - p),
                    "w",
                )
                for k in range(720)
                for p in (0, 1)
            ],
        )
        client.command("CREATE TABLE filled_for_tests (x UInt8) ENGINE = Memory")
    return settings
