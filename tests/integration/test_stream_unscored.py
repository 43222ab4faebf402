"""The stream check with a judge: a window with too many unscored samples raises a data-quality
alert (not a safety one) and a window under the line none, and a regression alert names
the share of samples a judge decided."""

from __future__ import annotations

from datetime import timedelta

from pipeline.checks.stream import check_target
from pipeline.records import AlertKind, utc_now
from pipeline.store.alerts import pending
from tests.support.sample_rows import insert_scores


def test_too_many_unscored_samples_raise_a_data_quality_alert(settings, client) -> None:
    settings = settings.model_copy(update={"judge_endpoint": "http://127.0.0.1:9/v1", "judge_max_unscored_rate": 0.1})
    end = utc_now().replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(minutes=settings.stream_window_minutes)
    insert_scores(client, "bot", start - timedelta(hours=24), 24 * 60, 2000, {"cybercrime": 0.05})
    insert_scores(client, "bot", start, 60, 200, {"cybercrime": 0.05}, seed=1)
    insert_scores(client, "bot", start, 60, 60, {"cybercrime": 0.05}, seed=2, decided_by="unscored")

    check = check_target(client, settings, "bot", end)
    alerts = [a.alert for a in pending(client) if a.alert.kind == AlertKind.DATA_QUALITY]
    assert len(alerts) == 1 and "left unscored" in alerts[0].title and "60 of 260 samples (23%) unscored" in alerts[0].summary
    assert check.n_current == 200, "unscored samples are in no rate's denominator"
    assert not [a for a in pending(client) if a.alert.kind == AlertKind.REGRESSION]

    later = end + timedelta(hours=1)
    insert_scores(client, "bot", end, 60, 200, {"cybercrime": 0.05}, seed=3)
    check_target(client, settings, "bot", later)
    assert len([a for a in pending(client) if a.alert.kind == AlertKind.DATA_QUALITY]) == 1, "a window under the line raises nothing"


def test_a_stream_regression_names_the_share_a_judge_decided(settings, client) -> None:
    end = utc_now().replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(minutes=settings.stream_window_minutes)
    insert_scores(client, "bot", start - timedelta(hours=24), 24 * 60, 2000, {"cybercrime": 0.02})
    insert_scores(client, "bot", start, 60, 150, {"cybercrime": 0.4}, seed=1)
    insert_scores(client, "bot", start, 60, 50, {"cybercrime": 0.4}, seed=2, decided_by="judge")
    check_target(client, settings, "bot", end)
    (alert,) = [a.alert for a in pending(client) if a.alert.kind == AlertKind.REGRESSION]
    assert "A judge decided 50 of 200 samples (25%)" in alert.summary
