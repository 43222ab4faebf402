"""The store on the real embedded ClickHouse engine."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest
from tenacity import stop_after_attempt

from pipeline.records import ProbeResult, ProbeRun, Verdict, utc_now
from pipeline.settings import load_settings
from pipeline.store import client as store_client
from pipeline.store import probes as probe_store
from pipeline.store.client import StoreUnavailable, open_store
from pipeline.store.migrations import Migration, MigrationError, discover, migrate
from pipeline.store.sql import ReadOnlyViolation, run_read_only
from tests.support.clock import FakeClock
from tests.support.probe_results import probe_result


def _run(run_id: str = "r1", model_version: str = "v1") -> ProbeRun:
    now = utc_now()
    return ProbeRun(run_id, "bot", "core", "1", model_version, now, now, 3, 1)


def _results(run_id: str, detector_version: str = "exemplars-test+torch") -> list[ProbeResult]:
    # Scores exact in Float32, so what is read back equals what was written.
    return [
        probe_result(run_id, f"p{i}", "cybercrime", verdict, violation=0.25, refusal_score=0.75, response="resp", detector_version=detector_version)
        for i, verdict in enumerate([Verdict.ATTACK_SUCCESS, Verdict.REFUSED, Verdict.REFUSED])
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


def test_baseline_is_latest_passed_healthy_run_of_the_same_detector_version(client) -> None:
    from dataclasses import replace

    base = replace(_run("a"), outcome="passed")
    # A later run that regressed, then the run looking for its baseline.
    regressed = replace(_run("b", "v2"), outcome="regressed", started_at=base.started_at + timedelta(seconds=1))
    current = replace(_run("c", "v2"), started_at=base.started_at + timedelta(seconds=2))
    for run in (base, regressed, current):
        probe_store.write_results(client, run, _results(run.run_id))
    probe_store.write_run(client, base)
    probe_store.write_run(client, regressed)
    assert probe_store.find_baseline(client, current).run_id == "a"
    assert probe_store.find_baseline(client, current, pinned_model_version="v9") is None
    # Scored by other detectors (a new head, another backend): its rates are not comparable with a's.
    rescored = replace(_run("d", "v2"), started_at=base.started_at + timedelta(seconds=3))
    probe_store.write_results(client, rescored, _results("d", detector_version="head-0123456789ab+torch"))
    assert probe_store.find_baseline(client, rescored) is None
    probe_store.write_run(client, replace(rescored, outcome="passed"))
    later = replace(_run("e", "v2"), started_at=base.started_at + timedelta(seconds=4))
    probe_store.write_results(client, later, _results("e", detector_version="head-0123456789ab+torch"))
    assert probe_store.find_baseline(client, later).run_id == "d"


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
    # The engine itself, held by a process that is not safemon (no turn file) until the test closes its stdin.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, clickhouse_connect
            c = clickhouse_connect.get_client(dsn="chdb://{path}")
            print("held", flush=True)
            sys.stdin.read()
            c.close()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    probe = textwrap.dedent(f"""
        import sys
        from pipeline.settings import load_settings
        from pipeline.store.client import open_store, StoreUnavailable
        try:
            with open_store(load_settings(clickhouse_dsn="chdb://{path}", clickhouse_lock_timeout_s=float(sys.argv[1]))) as c:
                c.query("SELECT 1")
            print("opened", flush=True)
        except StoreUnavailable as exc:
            print("unavailable", exc, flush=True)
    """)
    try:
        assert holder.stdout.readline().strip() == "held"
        # A short deadline gives up with a clear error.
        short = subprocess.run([sys.executable, "-c", probe, "1"], capture_output=True, text=True, timeout=60)
        assert short.stdout.splitlines()[-1].startswith("unavailable") and "another process holds" in short.stdout
        # A long one retries while the store is held, and opens once the holder lets go.
        waiting = subprocess.Popen([sys.executable, "-c", probe, "120"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        before: list[str] = []
        while (line := waiting.stdout.readline()) and "store.open_retry" not in line:
            before.append(line)
        assert "store.open_retry" in line, "".join(before)  # it found the store held and is retrying
        holder.stdin.close()
        after, _ = waiting.communicate(timeout=180)
        assert "opened" in after.splitlines(), after
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_the_turn_and_the_engine_share_one_deadline(tmp_path, monkeypatch) -> None:
    """Waiting for the lock-file turn, then for an engine still held, gives up at the one deadline, not twice it."""
    # In process, on a clock the test moves: the turn is held (flock on another descriptor) for
    # 2.5 of a 3 s deadline; the engine (stubbed) reports itself held by another process.
    path = tmp_path.resolve() / "held"
    clock = FakeClock()
    started = clock.now
    monkeypatch.setattr(store_client, "time", clock)
    turn = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(turn, fcntl.LOCK_EX)
    clock.at(2.5, lambda: fcntl.flock(turn, fcntl.LOCK_UN))

    engine_tried_at: list[float] = []

    def engine_held(settings, readonly):
        engine_tried_at.append(clock.now - started)
        raise RuntimeError("Unable to open the chdb engine: held by another process")

    engine_budgets: list[float] = []

    def stop_after_delay(seconds: float):
        engine_budgets.append(seconds)
        return stop_after_attempt(1)  # give up after the first attempt instead of retrying in real time

    monkeypatch.setattr(store_client, "_connect", engine_held)
    monkeypatch.setattr(store_client, "stop_after_delay", stop_after_delay)
    settings = load_settings(clickhouse_dsn=f"chdb://{path}", clickhouse_lock_timeout_s=3)
    try:
        with pytest.raises(StoreUnavailable, match="another process holds"), open_store(settings):
            pass
    finally:
        os.close(turn)
    # The engine was tried once the turn came, 2.5 s in, with what was left of the 3 s for its retries, not 3 s more.
    assert engine_tried_at == [pytest.approx(2.5, abs=store_client.TURN_POLL_S)]
    assert engine_budgets == [pytest.approx(0.5, abs=store_client.TURN_POLL_S)]


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
            end = time.monotonic() + 120
            while time.monotonic() < end:
                with open_store(settings) as client:
                    client.query("SELECT 1")
                    print("holding", flush=True)
                    time.sleep(0.3)
                time.sleep(0.02)  # a stream worker between two batches' stores
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )

    def next_hold() -> None:
        while (line := busy.stdout.readline()) and line.strip() != "holding":
            pass  # store log lines come between
        assert line.strip() == "holding", "the busy process stopped"

    try:
        # The deadline is generous: if the opener starved it would fail when the deadline passed,
        # long before the busy process stops.
        settings = load_settings(clickhouse_dsn=dsn, clickhouse_lock_timeout_s=60)
        for _ in range(3):
            next_hold()  # the busy process holds the store now
            # Nested opens within one process share its turn.
            with open_store(settings) as client, open_store(settings) as nested:
                assert client.query("SELECT 1").result_rows == nested.query("SELECT 1").result_rows == [(1,)]
        next_hold()
        assert busy.poll() is None  # it was busy the whole time, and still is
    finally:
        busy.kill()
        busy.wait(timeout=30)
