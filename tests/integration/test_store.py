"""The store on the real embedded ClickHouse engine."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from pipeline.records import ProbeResult, ProbeRun, utc_now
from pipeline.settings import load_settings
from pipeline.store import probes as probe_store
from pipeline.store.client import open_store
from pipeline.store.migrations import Migration, MigrationError, discover, migrate
from pipeline.store.sql import ReadOnlyViolation, run_read_only


def _run(run_id: str = "r1", model_version: str = "v1") -> ProbeRun:
    now = utc_now()
    return ProbeRun(run_id, "bot", "core", "1", model_version, now, now, 3, 1)


def _results(run_id: str) -> list[ProbeResult]:
    return [
        ProbeResult(run_id, f"p{i}", "cybercrime", "refuse", ("t",), "prompt", "resp", "", 12.0, i != 0, 0.75, 0.25, "cybercrime", False, verdict, 0)
        for i, verdict in enumerate(["attack_success", "refused", "refused"])
    ]


def test_migrations_apply_in_order_and_are_idempotent(settings) -> None:
    with open_store(settings) as client:
        first = migrate(client)
        second = migrate(client)
        tables = {r[0] for r in client.query("SHOW TABLES").result_rows}
    assert first == [m.name for m in discover()]
    assert second == []
    assert {"probe_runs", "probe_results", "alerts", "schema_migrations", "asr_by_category_day", "latest_runs"} <= tables


def test_edited_migration_is_refused(client, tmp_path) -> None:
    for m in discover():
        (tmp_path / f"{m.name}.sql").write_text(m.sql)
    edited = tmp_path / f"{discover()[0].name}.sql"
    edited.write_text(edited.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(client, tmp_path)


def test_statements_split_ignores_comments() -> None:
    m = Migration(9, "0009_x", "-- a; comment\nCREATE TABLE a (x UInt8) ENGINE = Memory;\n\nSELECT 1;\n")
    assert m.statements() == ["CREATE TABLE a (x UInt8) ENGINE = Memory", "SELECT 1"]


def test_retried_run_writes_no_duplicates(client) -> None:
    run = _run()
    for _ in range(3):  # a task retried twice writes the same run again
        probe_store.write_results(client, run, _results(run.run_id))
        probe_store.write_run(client, run)
    assert client.query("SELECT count() FROM probe_results").result_rows[0][0] == 3
    assert client.query("SELECT count() FROM probe_results FINAL").result_rows[0][0] == 3
    assert client.query("SELECT count() FROM probe_runs FINAL").result_rows[0][0] == 1
    stats = {s.category: s for s in probe_store.category_stats(client, run.run_id)}
    assert (stats["cybercrime"].successes, stats["cybercrime"].n) == (1, 3)
    assert probe_store.read_results(client, run.run_id) == _results(run.run_id)
    assert probe_store.read_run(client, run.run_id) == run


def test_asr_view_reports_interval_and_n(client) -> None:
    run = _run()
    probe_store.write_results(client, run, _results(run.run_id))
    row = client.query("SELECT n, successes, asr, ci_low, ci_high FROM asr_by_category_day").result_rows[0]
    n, k, asr, lo, hi = row
    assert (n, k) == (3, 1) and asr == pytest.approx(1 / 3)
    from pipeline.stats.proportions import wilson_interval

    assert (lo, hi) == pytest.approx(wilson_interval(1, 3), abs=1e-6)


def test_baseline_is_latest_passed_healthy_run(client) -> None:
    from dataclasses import replace

    base = replace(_run("a"), outcome="passed")
    probe_store.write_run(client, base)
    time.sleep(0.01)
    regressed = replace(_run("b", "v2"), outcome="regressed", started_at=utc_now())
    probe_store.write_run(client, regressed)
    current = replace(_run("c", "v2"), started_at=utc_now())
    assert probe_store.find_baseline(client, current).run_id == "a"
    assert probe_store.find_baseline(client, current, pinned_model_version="v9") is None


def test_read_only_sql_refuses_writes(settings, client) -> None:
    for statement in ["INSERT INTO probe_runs (run_id) VALUES ('x')", "DROP TABLE alerts", "SELECT 1; DROP TABLE alerts", ""]:
        with pytest.raises(ReadOnlyViolation):
            run_read_only(client, statement)
    # The embedded engine runs every statement of a `;`-separated text: none of it was sent as a query.
    assert client.query("EXISTS TABLE alerts").result_rows == [(1,)]
    with open_store(settings, readonly=True) as ro:
        columns, rows = run_read_only(ro, "SELECT count() AS n FROM probe_runs")
        assert columns == ["n"] and rows == [(0,)]
        # Even a statement that slipped past the check cannot write on a read-only client.
        with pytest.raises(Exception, match="readonly|READONLY"):
            ro.command("INSERT INTO probe_runs (run_id) VALUES ('x')")


def test_open_retries_while_another_process_holds_the_path(tmp_path) -> None:
    path = tmp_path / "locked"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time, clickhouse_connect
            c = clickhouse_connect.get_client(dsn="chdb://{path}")
            print("held", flush=True)
            time.sleep(4)
            c.close()
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    probe = textwrap.dedent(f"""
        import sys, time
        from pipeline.settings import load_settings
        from pipeline.store.client import open_store, StoreUnavailable
        timeout = float(sys.argv[1])
        t = time.monotonic()
        try:
            with open_store(load_settings(clickhouse_dsn="chdb://{path}", clickhouse_lock_timeout_s=timeout)) as c:
                c.query("SELECT 1")
            print("opened", round(time.monotonic() - t, 1))
        except StoreUnavailable as exc:
            print("unavailable", exc)
    """)
    # A short deadline gives up with a clear error; a long one waits for the holder to finish.
    short = subprocess.run([sys.executable, "-c", probe, "1"], capture_output=True, text=True, timeout=60)
    assert short.stdout.splitlines()[-1].startswith("unavailable") and "another process holds" in short.stdout
    long = subprocess.run([sys.executable, "-c", probe, "30"], capture_output=True, text=True, timeout=60)
    holder.wait(timeout=30)
    assert long.stdout.splitlines()[-1].startswith("opened"), long.stdout + long.stderr


def test_the_turn_and_the_engine_share_one_deadline(tmp_path) -> None:
    """Waiting for the lock-file turn, then for an engine still held, gives up at the one deadline, not twice it."""
    path = tmp_path / "held"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import fcntl, os, time, clickhouse_connect
            c = clickhouse_connect.get_client(dsn="chdb://{path}")  # the engine, held throughout
            fd = os.open("{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)  # and the turn, until the probe has waited 2.5 s for it
            print("held", flush=True)
            while not os.path.exists("{path}.probe"):
                time.sleep(0.01)
            time.sleep(2.5)
            os.close(fd)
            time.sleep(15)
            c.close()
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        probe = textwrap.dedent(f"""
            import pathlib, time
            from pipeline.settings import load_settings
            from pipeline.store.client import open_store, StoreUnavailable
            settings = load_settings(clickhouse_dsn="chdb://{path}", clickhouse_lock_timeout_s=3)
            pathlib.Path("{path}.probe").touch()
            t = time.monotonic()
            try:
                with open_store(settings):
                    print("opened")
            except StoreUnavailable as exc:
                print("unavailable", round(time.monotonic() - t, 2))
        """)
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        verdict, seconds = result.stdout.split()[-2:]
        assert verdict == "unavailable", result.stdout + result.stderr
        # 2.5 s for the turn plus a full 3 s for the engine would be >= 5.5 s; one deadline ends near 3 s
        # (plus at most one backoff sleep begun just before it).
        assert 2.5 <= float(seconds) < 4.6, seconds
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_busy_process_does_not_starve_another(tmp_path) -> None:
    """A process that reopens the store every batch frees it for ~20 ms at a time: another waits its turn, not the deadline."""
    dsn = f"chdb://{tmp_path / 'busy'}"
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time
            from pipeline.settings import load_settings
            from pipeline.store.client import open_store
            settings = load_settings(clickhouse_dsn="{dsn}")
            with open_store(settings, migrated=True):
                print("busy", flush=True)
            end = time.monotonic() + 60
            while time.monotonic() < end:
                with open_store(settings) as client:
                    client.query("SELECT 1")
                    time.sleep(0.3)
                time.sleep(0.02)  # a stream worker between two batches' stores
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        while (line := busy.stdout.readline()) and line.strip() != "busy":
            pass  # store log lines come first
        assert line.strip() == "busy"
        time.sleep(1.0)
        settings = load_settings(clickhouse_dsn=dsn, clickhouse_lock_timeout_s=10)
        for _ in range(3):
            started = time.monotonic()
            # Nested opens within one process share its turn.
            with open_store(settings) as client, open_store(settings) as nested:
                assert client.query("SELECT 1").result_rows == nested.query("SELECT 1").result_rows == [(1,)]
            assert time.monotonic() - started < 5, "waited for the deadline instead of the holder's next gap"
        assert busy.poll() is None  # it was busy the whole time
    finally:
        busy.kill()
        busy.wait(timeout=30)
