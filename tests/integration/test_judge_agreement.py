"""Head-judge agreement on the real engine: the view, the cookbook's recipe, the report's daily
table, and the check that raises a drift alert when the judge stops agreeing with the heads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from pipeline.checks.agreement import check_all, check_target
from pipeline.checks.findings import CheckStatus
from pipeline.records import AlertKind, AlertStatus, Source
from pipeline.stats.proportions import wilson_interval
from pipeline.store.cookbook import run_recipe
from pipeline.store.history import load_agreement
from pipeline.store.migrations import migrate
from tests.support.audit_rows import JUDGE_VERSION, insert_probe_audits, insert_sample_audits

END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
TARGET = "prod-chat"
DAY, WEEK = timedelta(days=1), timedelta(days=7)


def _fell(check) -> list[str]:
    return [c.category for c in check.comparisons if c.regressed]


def _history(client, *, cybercrime_now: float, audits_now: int = 100) -> None:
    """A baseline week of audits at 95% agreement (60 samples per day for each of two hazards, a probe
    run of 40 a day), then the last day: `audits_now` samples per hazard, cybercrime's agreement at
    `cybercrime_now`, hate's and the probes' still at 95%."""
    for day in range(1, 8):
        start = END - DAY - day * DAY
        for category in ("cybercrime", "hate"):
            insert_sample_audits(client, TARGET, start, 23, 60, 0.95, category=category)
        insert_probe_audits(client, TARGET, start + timedelta(hours=2), 40, 0.95)
    insert_sample_audits(client, TARGET, END - timedelta(hours=23), 22, audits_now, cybercrime_now, category="cybercrime")
    insert_sample_audits(client, TARGET, END - timedelta(hours=23), 22, audits_now, 0.95, category="hate")
    insert_probe_audits(client, TARGET, END - timedelta(hours=3), 40, 0.95)


def test_agreement_that_falls_on_one_category_raises_one_drift_alert_naming_it(client, settings) -> None:
    _history(client, cybercrime_now=0.70)
    check = check_target(client, settings, TARGET, END)
    assert check.status == CheckStatus.CHECKED and check.n_current == 240 and check.n_baseline == 7 * 160
    assert _fell(check) == ["cybercrime (stream)"]
    compared = {c.category: c for c in check.comparisons}
    assert set(compared) == {"cybercrime (stream)", "hate (stream)", "cybercrime (probe)"}
    fell = compared["cybercrime (stream)"]
    # The rates compared are disagreement: 3 of 60 a day before, 30 of 100 now.
    assert (fell.baseline.successes, fell.baseline.n, fell.current.successes, fell.current.n) == (21, 420, 30, 100)
    assert fell.p_adjusted < 1e-6 and fell.effect == pytest.approx(0.25)
    alert = check.alert.alert
    assert check.alert.status == AlertStatus.PENDING
    assert (alert.kind, alert.source, alert.categories) == (AlertKind.DRIFT, Source.JUDGE, ("cybercrime (stream)",))
    assert alert.title == "Head–judge agreement fell on prod-chat (v1): cybercrime (stream)"
    assert "cybercrime (stream) 95% -> 70%" in alert.summary and f"Judge {JUDGE_VERSION}: 240 audits" in alert.summary
    assert "judge_agreement_by_day" in alert.sql and "'prod-chat'" in alert.sql
    # The alert shows what they disagreed on: audited samples of the category that fell.
    assert len(alert.samples) == 3 and {(s.category, s.prompt, s.response) for s in alert.samples} == {
        ("cybercrime (stream)", "user text [EMAIL]", "assistant text")
    }
    # Its chart draws the category's daily disagreement: low for a week, then the fall.
    from pipeline.alerts.dispatch import load_trend

    trend = load_trend(client, alert)
    assert {p.category for p in trend} == {"cybercrime (stream)"} and len(trend) >= 7
    # (the alert's 24 h window spans the last two calendar days)
    assert max(p.rate for p in trend[-2:]) >= 0.3 and max(p.rate for p in trend[:-2]) < 0.1
    # An hour later it still fires: a follow-up in the chain's thread, as drift does.
    later = check_target(client, settings, TARGET, END + timedelta(hours=1))
    assert _fell(later) == ["cybercrime (stream)"] and later.alert.alert.title.startswith("Head–judge agreement still low")
    # A day of agreement back at 95% closes the chain.
    insert_sample_audits(client, TARGET, END + timedelta(hours=1), 22, 100, 0.95, category="cybercrime")
    insert_sample_audits(client, TARGET, END + timedelta(hours=1), 22, 100, 0.95, category="hate")
    recovered = check_target(client, settings, TARGET, END + DAY)
    assert _fell(recovered) == [] and recovered.alert.alert.kind == AlertKind.RECOVERY
    assert recovered.alert.alert.title == "Head–judge agreement recovered on prod-chat (v1)"
    assert recovered.alert.alert.categories == ("cybercrime (stream)",)


def test_agreement_as_high_as_its_baseline_raises_nothing(client, settings) -> None:
    _history(client, cybercrime_now=0.95)
    (check,) = check_all(client, settings, END)
    assert check.status == CheckStatus.CHECKED and len(check.comparisons) == 3
    assert _fell(check) == [] and check.alert is None


def test_a_window_with_too_few_audits_is_insufficient(client, settings) -> None:
    _history(client, cybercrime_now=0.0, audits_now=10)  # every one disagreed, but only 10 of them
    (check,) = check_all(client, settings, END)
    # The probe run of the day has 40 audits: only it is tested, and it did not fall.
    assert check.status == CheckStatus.CHECKED and [c.category for c in check.comparisons] == ["cybercrime (probe)"]
    assert check.alert is None
    few = settings.model_copy(update={"judge_agreement_min_audited": 41})
    assert check_target(client, few, TARGET, END).status == CheckStatus.INSUFFICIENT_DATA


def _not_counted(client, at: datetime) -> None:
    """Judged rows the agreement leaves out: uncertain verdicts the judge decided, and an audit it never answered."""
    columns = ["sample_id", "occurred_at", "target", "model_version", "violation_category", "head_verdict", "judge_role", "judge_verdict", "decided_by"]
    rows = [
        ["u1", at, TARGET, "v1", "cybercrime", "unsafe", "uncertain", "safe", "judge"],
        ["u2", at, TARGET, "v1", "cybercrime", "safe", "audit", "", "head"],
    ]
    client.insert("sample_scores", rows, column_names=columns)


def test_the_view_the_recipe_and_the_report_count_the_answered_audits_once(client) -> None:
    at = (END - DAY).replace(hour=1)  # two hours of one day: a row per group in the daily view
    insert_sample_audits(client, TARGET, at, 2, 100, 0.7, category="cybercrime")
    insert_sample_audits(client, TARGET, at, 2, 20, 0.5, category="", model_version="v2")  # no top hazard: category 'none'
    insert_probe_audits(client, TARGET, at, 40, 0.9, run_id="run-a")
    insert_probe_audits(client, TARGET, at, 40, 0.9, run_id="run-a")  # stored again by a retried task: counted once
    insert_sample_audits(client, "other-bot", at, 2, 10, 1.0)
    _not_counted(client, at)

    rows = client.query(
        "SELECT source, category, model_version, sum(audited), sum(agreed), any(rate), any(ci_low), any(ci_high), any(judge_version) "
        "FROM judge_agreement_by_day WHERE target = {t:String} GROUP BY source, category, model_version ORDER BY source, category",
        parameters={"t": TARGET},
    ).result_rows
    found = {(s, c, m): (n, k) for s, c, m, n, k, *_ in rows}
    assert found == {("probe", "cybercrime", "v1"): (40, 36), ("stream", "cybercrime", "v1"): (100, 70), ("stream", "none", "v2"): (20, 10)}
    for _, _, _, n, k, rate, low, high, judge in rows:
        assert rate == pytest.approx(k / n) and (low, high) == pytest.approx(wilson_interval(k, n)) and judge == JUDGE_VERSION

    columns, recipe = run_recipe(client, "judge_agreement", {"target": TARGET, "days": 7})
    answers = [dict(zip(columns, r, strict=True)) for r in recipe]
    assert [(a["source"], a["category"], a["model_version"], a["audits"], a["agreements"]) for a in answers] == [
        ("probe", "cybercrime", "v1", 40, 36),
        ("stream", "cybercrime", "v1", 100, 70),
        ("stream", "none", "v2", 20, 10),
    ]
    stream = answers[1]
    assert stream["rate"] == 0.7 and (stream["ci_low"], stream["ci_high"]) == pytest.approx(wilson_interval(70, 100), abs=1e-4)
    _, everyone = run_recipe(client, "judge_agreement")
    assert {r[0] for r in everyone} == {TARGET, "other-bot"}

    daily = load_agreement(client, END - WEEK, END)
    ours = daily[daily.target == TARGET].groupby("source")[["audited", "agreed"]].sum()
    assert ours.to_dict("index") == {"probe": {"audited": 40, "agreed": 36}, "stream": {"audited": 120, "agreed": 80}}
    assert ((daily.ci_low <= daily.rate) & (daily.rate <= daily.ci_high)).all()


def test_audits_stored_before_the_migration_are_backfilled_once(client) -> None:
    # Back to before 0015, with audits stored meanwhile: one probe run of them twice (a retried task).
    for name in ("judge_agreement_by_day", "judge_audits_probe_mv", "judge_audits_sample_mv", "judge_audits"):
        client.command(f"DROP TABLE {name}")
    client.command("ALTER TABLE schema_migrations DELETE WHERE version = 15 SETTINGS mutations_sync = 1")
    at = END - DAY
    insert_sample_audits(client, TARGET, at, 2, 50, 0.8)
    insert_probe_audits(client, TARGET, at, 30, 0.9, run_id="run-b")
    insert_probe_audits(client, TARGET, at, 30, 0.9, run_id="run-b")
    assert migrate(client) == ["0015_create_judge_agreement"]
    insert_sample_audits(client, TARGET, at, 2, 10, 1.0)  # and the insert triggers keep it after
    counted = client.query("SELECT source, sum(audited), sum(agreed) FROM judge_agreement_by_day GROUP BY source ORDER BY source").result_rows
    assert counted == [("probe", 30, 27), ("stream", 60, 50)]


def test_the_airflow_task_returns_counts_xcom_can_carry(client, settings, monkeypatch) -> None:
    import airflow.sdk

    from pipeline import tasks

    _history(client, cybercrime_now=0.70)
    context = {"dag": SimpleNamespace(dag_id="safemon_stream_checks"), "run_id": "manual__1", "data_interval_end": END}
    monkeypatch.setattr(airflow.sdk, "get_current_context", lambda: context)
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    result = tasks.check_judge_agreement()
    assert json.loads(json.dumps(result)) == {TARGET: {"status": "checked", "audited": 240, "baseline_audited": 1120, "fell": ["cybercrime (stream)"]}}
