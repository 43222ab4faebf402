"""The pre-aggregated probe history (migration 0012) answers as the raw rows do.

Each view that 0012 redefined over the rollups is compared with its original definition (the
SQL of migrations 0003 and 0006, run over every probe result with FINAL) on a small store
holding re-inserted duplicates and a re-scored run; corrected_rates is compared with its
earlier SQL over the raw rows. A store with history from before 0012 gets that history
backfilled when it migrates.
"""

from __future__ import annotations

import math
import re
import shutil
from datetime import timedelta

from pipeline.records import ProbeRun, Verdict, utc_now
from pipeline.store import probes as probe_store
from pipeline.store.cookbook import run_recipe
from pipeline.store.migrations import MIGRATIONS_DIR, clusterize, discover, migrate
from pipeline.store.rollups import summarise_run
from tests.support.probe_results import probe_result
from tests.support.sample_rows import insert_scores

REDEFINED = ("asr_by_category_day", "over_refusal_by_day", "asr_by_model_version", "probe_verdicts_by_model_version")
CATEGORIES = ("cybercrime", "hate", "over_refusal")


def _original_views() -> dict[str, str]:
    """Each redefined view's SELECT as migrations 0003 and 0006 shipped it (over probe_results FINAL)."""
    found = {}
    for migration in discover():
        if migration.version in (3, 6):
            for statement in migration.statements():
                match = re.match(r"CREATE VIEW IF NOT EXISTS (\w+) AS\s+(.*)$", statement, re.S)
                if match and match.group(1) in REDEFINED:
                    found[match.group(1)] = match.group(2)
    assert set(found) == set(REDEFINED)
    return found


def _verdict(run: int, probe: int, category: str) -> Verdict:
    # A deterministic mix: benign probes are sometimes over-refused, harmful ones sometimes
    # answered, more often in later runs (so versions differ), and a few errors.
    if (run * 7 + probe) % 11 == 0:
        return Verdict.ERROR
    if category == "over_refusal":
        return Verdict.OVER_REFUSAL if (run + probe) % 3 == 0 else Verdict.COMPLIED_OK
    return Verdict.ATTACK_SUCCESS if (run * probe + run) % 5 < 1 + run % 3 else Verdict.REFUSED


def _fill_probes(client, runs: int = 6) -> list[ProbeRun]:
    """`runs` runs per suite of two suites over two model versions and three days."""
    now = utc_now()
    written = []
    for number in range(runs):
        for suite in ("core", "jailbreaks"):
            at = now - timedelta(days=3) + timedelta(hours=11 * number)
            run = ProbeRun(f"{suite}-{number}", "bot", suite, "1", "v1" if number < runs // 2 else "v2", at, at, 9, 0)
            results = [
                probe_result(
                    run.run_id,
                    f"{category}-{i}",
                    category,
                    _verdict(number, i, category),
                    expect="comply" if category == "over_refusal" else "refuse",
                    response=f"answer {number}-{i}",
                )
                for category in CATEGORIES
                for i in range(3)
            ]
            probe_store.write_run(client, run)
            probe_store.write_results(client, run, results)
            written.append(run)
    return written


def _reinsert(client, run: ProbeRun, *, flip: str | None = None) -> None:
    """Insert a run's rows again, newer, as a retried write would (past the deduplication
    window); `flip` re-scores that probe with the other verdict. Then summarise, as
    write_results does after every write."""
    changed = "" if flip is None else (f", if(probe_id = '{flip}', if(verdict = 'refused', 'attack_success', 'refused'), verdict) AS verdict")
    client.command(
        f"INSERT INTO probe_results SELECT * REPLACE (now64(3) + INTERVAL 1 SECOND AS scored_at{changed}) FROM probe_results FINAL WHERE run_id = {{r:String}}",
        parameters={"r": run.run_id},
        settings={"insert_deduplication_token": f"again:{run.run_id}:{flip}"},
    )
    summarise_run(client, run.target, run.suite, run.run_id)


def _rows(client, sql: str) -> list[tuple]:
    def norm(value):
        if isinstance(value, float):
            return "nan" if math.isnan(value) else round(value, 9)
        if isinstance(value, list | tuple):
            return tuple(norm(v) for v in value)
        return value

    return sorted(tuple(norm(v) for v in row) for row in client.query(sql).result_rows)


def _asr(client) -> list[tuple]:
    return _rows(client, "SELECT suite, model_version, category, n, successes FROM asr_by_model_version")


def test_a_duplicated_insert_changes_no_aggregated_rate(client) -> None:
    client.command("SYSTEM STOP MERGES probe_results")  # the duplicates stay stored until read
    runs = _fill_probes(client)
    before = _asr(client)
    verdicts = _rows(client, "SELECT * FROM probe_verdicts_by_model_version")
    for run in runs[:4]:
        _reinsert(client, run)
    assert client.query("SELECT count() - uniqExact(run_id, probe_id) FROM probe_results").result_rows[0][0] == 4 * 9  # duplicates stored
    assert _asr(client) == before
    assert _rows(client, "SELECT * FROM probe_verdicts_by_model_version") == verdicts
    assert client.query("SELECT count() FROM probe_run_categories FINAL").result_rows[0][0] == len(runs) * len(CATEGORIES)
    # A re-scored probe counts with its newest verdict, as FINAL reads it.
    newest = runs[-1]
    _reinsert(client, newest, flip="cybercrime-1")
    after = {(s, v, c): (n, k) for s, v, c, n, k in _asr(client)}
    was = {(s, v, c): (n, k) for s, v, c, n, k in before}
    flipped_to = client.query(
        "SELECT verdict FROM probe_results FINAL WHERE run_id = {r:String} AND probe_id = 'cybercrime-1'", parameters={"r": newest.run_id}
    ).result_rows[0][0]
    step = 1 if flipped_to == "attack_success" else -1
    key = (newest.suite, "v2", "cybercrime")
    assert after[key] == (was[key][0], was[key][1] + step)
    assert {k: v for k, v in after.items() if k != key} == {k: v for k, v in was.items() if k != key}
    latest = client.query(
        "SELECT verdict FROM probe_verdicts_by_model_version WHERE suite = {s:String} AND model_version = 'v2' AND probe_id = 'cybercrime-1'",
        parameters={"s": newest.suite},
    ).result_rows[0][0]
    assert latest == flipped_to


def test_views_over_rollups_match_their_original_sql_over_raw_rows(client) -> None:
    runs = _fill_probes(client)
    _reinsert(client, runs[2])
    _reinsert(client, runs[-1], flip="hate-2")
    _reinsert(client, runs[-2], flip="over_refusal-0")
    for name, original in _original_views().items():
        from_rollups = _rows(client, f"SELECT * FROM {name}")
        from_raw = _rows(client, f"SELECT * FROM ({original})")
        assert from_rollups and from_rollups == from_raw, name


# corrected_rates as it read the raw rows before the rollups (its stream part expanded every
# sample's hazards): the reference the rewritten recipe must agree with.
_CORRECTED_RAW = """
WITH if({until:String} = '', now64(3), parseDateTime64BestEffort({until:String}, 3, 'UTC')) AS upto
SELECT r.measure, r.target, r.scope, r.category, r.n, r.k
FROM (
    SELECT 'probe attack success' AS measure, target, suite AS scope, category, detector_version,
           countIf(verdict != 'error') AS n, countIf(verdict = 'attack_success') AS k
    FROM probe_results FINAL
    WHERE expect = 'refuse' AND run_id IN (SELECT run_id FROM latest_runs)
    GROUP BY target, suite, category, detector_version
    UNION ALL
    SELECT 'stream violation' AS measure, target, model_version AS scope, hazard AS category, detector_version,
           count() AS n, countIf(has(flagged_categories, hazard)) AS k
    FROM sample_scores FINAL ARRAY JOIN mapKeys(violation_scores) AS hazard
    WHERE occurred_at > upto - toIntervalHour({hours:UInt32}) AND occurred_at <= upto
    GROUP BY target, model_version, hazard, detector_version
) AS r
WHERE r.n > 0
"""


def test_corrected_rates_match_their_raw_computation(client) -> None:
    runs = _fill_probes(client)
    _reinsert(client, runs[-1], flip="cybercrime-0")
    now = utc_now()
    insert_scores(client, "prod", now - timedelta(hours=5), 240, 600, {"cybercrime": 0.1, "hate": 0.02}, seed=3)
    insert_scores(client, "prod", now - timedelta(hours=2), 60, 200, {"hate": 0.2}, seed=4, detector_version="head-abc+onnx")
    # A redelivered stream batch, stored twice: FINAL reads it once.
    client.command("INSERT INTO sample_scores SELECT * FROM sample_scores FINAL WHERE detector_version = 'head-abc+onnx'")
    params = {"target": "", "hours": 24, "until": now.isoformat()}
    columns, rows = run_recipe(client, "corrected_rates", params)
    picked = [columns.index(c) for c in ("measure", "target", "scope", "category", "n", "k")]
    recipe = sorted(tuple(row[i] for i in picked) for row in rows)
    raw = sorted(tuple(r) for r in client.query(_CORRECTED_RAW, parameters=params).result_rows)
    assert recipe == raw
    assert any(r[0] == "stream violation" and r[5] == 0 for r in recipe)  # hazards never flagged keep their n
    assert {r[0] for r in recipe} == {"probe attack success", "stream violation"}


def test_a_store_with_history_from_before_the_rollups_gets_it_backfilled(client, tmp_path, monkeypatch) -> None:
    # The client's database is fully migrated: take it back to before 0012 and keep the history.
    for table in ("probe_latest_verdicts_mv", "probe_latest_verdicts", "probe_run_categories"):
        client.command(f"DROP TABLE {table}")
    client.command("ALTER TABLE schema_migrations DELETE WHERE version >= 12 SETTINGS mutations_sync = 1")
    older = tmp_path / "migrations"
    older.mkdir()
    for migration in discover():
        if migration.version < 12:
            shutil.copy(MIGRATIONS_DIR / f"{migration.name}.sql", older)
    for migration in discover(older):
        for statement in migration.statements():
            if re.match(r"CREATE (OR REPLACE )?VIEW", statement):
                client.command(statement.replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW"))
    # Written as before the rollups existed: nothing summarised, and a run stored twice.
    monkeypatch.setattr(probe_store, "summarise_run", lambda *args: None)
    runs = _fill_probes(client, runs=4)
    client.command("INSERT INTO probe_results SELECT * REPLACE (now64(3) + INTERVAL 1 SECOND AS scored_at) FROM probe_results WHERE run_id = 'core-0'")
    expected = {name: _rows(client, f"SELECT * FROM {name}") for name in REDEFINED}
    assert "0012_create_probe_rollups" in migrate(client)
    assert client.query("SELECT count() FROM probe_run_categories FINAL").result_rows[0][0] == len(runs) * len(CATEGORIES)
    for name in REDEFINED:
        assert _rows(client, f"SELECT * FROM {name}") == expected[name], name


def test_the_rollups_migration_runs_on_a_cluster() -> None:
    rollups = next(m for m in discover() if m.version == 12)
    rewritten = [clusterize(s, "safemon") for s in rollups.statements()]
    ddl = [s for s in rewritten if not s.startswith("INSERT")]
    assert all("ON CLUSTER 'safemon'" in s.split("\n", 1)[0] for s in ddl)
    assert any("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', summarised_at)" in s for s in ddl)
    assert any("ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')" in s for s in ddl)
    assert any(s.startswith("CREATE MATERIALIZED VIEW IF NOT EXISTS probe_latest_verdicts_mv ON CLUSTER 'safemon' TO probe_latest_verdicts") for s in ddl)
    # The backfills insert once, on the node that migrates: replication carries the rows.
    inserts = [s for s in rewritten if s.startswith("INSERT")]
    assert len(inserts) == 2 and all(s in rollups.statements() for s in inserts)
