"""Stream alerts on the real engine: a hazard's violation rate rises in the last hour."""

from __future__ import annotations

from datetime import timedelta

from pipeline.checks.stream import check_all
from pipeline.records import Source, utc_now
from tests.support.sample_rows import insert_scores


def test_rise_in_one_hazard_alerts_once_and_quiet_traffic_does_not(client, settings) -> None:
    end = utc_now().replace(second=0, microsecond=0)
    hour = end - timedelta(hours=1)
    insert_scores(client, "bot", hour - timedelta(hours=24), 24 * 60, 800, {"cybercrime": 0.02, "hate": 0.02}, seed=1)
    insert_scores(client, "bot", hour, 60, 200, {"cybercrime": 0.20, "hate": 0.02}, seed=2)
    insert_scores(client, "quiet", hour - timedelta(hours=24), 24 * 60, 800, {"cybercrime": 0.02}, seed=3)
    insert_scores(client, "quiet", hour, 60, 200, {"cybercrime": 0.03}, seed=4)
    insert_scores(client, "tiny", hour, 60, 10, {"cybercrime": 0.5}, seed=5)
    # A rise measured by other detectors than the baseline's is no regression: nothing to compare with.
    insert_scores(client, "rescored", hour - timedelta(hours=24), 24 * 60, 800, {"cybercrime": 0.02}, seed=6)
    insert_scores(client, "rescored", hour, 60, 200, {"cybercrime": 0.20}, seed=7, detector_version="head-0123456789ab+torch")

    checks = {c.target: c for c in check_all(client, settings, end)}
    assert checks["tiny"].status == "insufficient_data" and checks["tiny"].alert is None
    assert (checks["rescored"].status, checks["rescored"].n_baseline, checks["rescored"].alert) == ("insufficient_data", 0, None)
    assert checks["quiet"].alert is None and not any(c.regressed for c in checks["quiet"].comparisons)
    bot = checks["bot"]
    assert [c.category for c in bot.comparisons if c.regressed] == ["cybercrime"]
    assert bot.alert.alert.source == Source.STREAM and bot.alert.alert.suite == "" and bot.alert.status == "pending"
    assert bot.alert.alert.samples and all(s.category == "cybercrime" for s in bot.alert.alert.samples)
    assert "violation_rate_by_hour" in bot.alert.alert.sql

    again = {c.target: c for c in check_all(client, settings, end)}  # a retried check
    assert again["bot"].alert.alert.alert_id == bot.alert.alert.alert_id
    assert client.query("SELECT count() FROM alerts FINAL").result_rows == [(1,)]


def test_the_alerts_sql_selects_only_its_target_whatever_the_target_is_named(client, settings) -> None:
    from pipeline.store.sql import run_read_only

    end = utc_now().replace(second=0, microsecond=0)
    hour = end - timedelta(hours=1)
    hostile = "x' OR 1=1 --"  # a target name as it could arrive in a Kafka message
    for target, seed in ((hostile, 1), ("other", 3)):
        insert_scores(client, target, hour - timedelta(hours=24), 24 * 60, 800, {"cybercrime": 0.02}, seed=seed)
        insert_scores(client, target, hour, 60, 200, {"cybercrime": 0.25}, seed=seed + 1)

    alert = {c.target: c for c in check_all(client, settings, end)}[hostile].alert.alert
    columns, rows = run_read_only(client, alert.sql.replace(f"{settings.clickhouse_database}.", ""))
    assert rows and columns[:2] == ["hour", "category"]
    counted = run_read_only(
        client, f"SELECT DISTINCT target FROM ({alert.sql.replace(f'{settings.clickhouse_database}.', '').replace('SELECT hour,', 'SELECT target, hour,', 1)})"
    )
    assert counted[1] == [(hostile,)]
