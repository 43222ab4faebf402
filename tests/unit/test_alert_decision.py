"""The one alert decision, for findings of every source: raise, hold back or thread, recover."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from pipeline.alerts.messages import build_followup, build_message
from pipeline.checks.alerts import decide, fingerprint
from pipeline.checks.findings import Finding
from pipeline.records import AlertKind, AlertStatus, CategoryStat, Comparison, Sample, Severity, Source, utc_now
from pipeline.stats.proportions import category_stat

NOW = utc_now()


def comparison(category: str, baseline: int, current: int, regressed: bool) -> Comparison:
    base, cur = category_stat(category, baseline, 50), category_stat(category, current, 50)
    return Comparison(category, base, cur, 0.001 if regressed else 0.4, 0.002 if regressed else 0.8, cur.rate - base.rate, regressed)


def regression(source: Source, run_id: str, *flagged: str) -> Finding:
    comparisons = (comparison("cybercrime", 2, 20, "cybercrime" in flagged), comparison("hate", 1, 15, "hate" in flagged))
    return Finding(
        source=source,
        kind=AlertKind.REGRESSION,
        target="bot",
        suite="core" if source == Source.PROBE else "",
        model_version="v2",
        run_id=run_id,
        baseline_model_version="v1",
        baseline_run_id="base",
        flagged=flagged,
        comparisons=comparisons,
        samples=tuple(Sample(f"s{i}", c, "prompt", "answer") for i, c in enumerate(["hate", "cybercrime", "cybercrime"])),
    )


@pytest.mark.parametrize("source", [Source.PROBE, Source.STREAM])
def test_regression_is_raised_held_back_widened_and_recovered(settings, source):
    first = decide(regression(source, "r1", "cybercrime"), [], settings, now=NOW)
    assert first.status == AlertStatus.PENDING and first.alert.severity == Severity.CRITICAL and first.alert.source == source
    assert first.alert.categories == ("cybercrime",) and [s.category for s in first.alert.samples] == ["cybercrime", "cybercrime"]
    assert [c.category for c in first.alert.comparisons] == ["cybercrime"]
    assert first.alert.scope == ("core" if source == Source.PROBE else "stream")

    same = decide(regression(source, "r2", "cybercrime"), [first], settings, now=NOW + timedelta(hours=1))
    assert same.status == AlertStatus.SUPPRESSED and same.alert.fingerprint == first.alert.fingerprint
    wider = decide(regression(source, "r3", "cybercrime", "hate"), [same, first], settings, now=NOW + timedelta(hours=2))
    assert wider.status == AlertStatus.PENDING, "a new category joining is news within the cooldown"
    after = decide(regression(source, "r4", "cybercrime"), [first], settings, now=NOW + timedelta(hours=settings.alert_cooldown_hours + 1))
    assert after.status == AlertStatus.PENDING, "after the cooldown the condition is posted again"

    recovered = decide(regression(source, "r5"), [wider, same, first], settings, now=NOW + timedelta(hours=3))
    assert recovered.alert.kind == AlertKind.RECOVERY and recovered.alert.categories == ("cybercrime", "hate")
    assert recovered.alert.fingerprint == first.alert.fingerprint
    assert decide(regression(source, "r6"), [recovered, wider], settings, now=NOW + timedelta(hours=4)) is None


def test_sources_are_separate_conditions():
    probe, stream = regression(Source.PROBE, "r", "hate"), regression(Source.STREAM, "r", "hate")
    assert fingerprint(probe) != fingerprint(stream) != fingerprint(replace(stream, kind=AlertKind.DRIFT))
    assert fingerprint(probe) == fingerprint(replace(probe, run_id="other", flagged=()))


def test_drift_posts_then_threads_follow_ups_then_recovers(settings):
    finding = Finding(Source.DRIFT, AlertKind.DRIFT, "bot", "", "v2", "drift w1", "", "same_hour_last_week", flagged=("attack_share",), summary="p_adj=1e-05")
    first = decide(finding, [], settings, now=NOW)
    assert first.alert.kind == AlertKind.DRIFT and first.status == AlertStatus.PENDING and "detected" in first.alert.title
    assert "attack_share" in str(build_message(first.alert))
    again = decide(replace(finding, run_id="drift w2", summary="still"), [first], settings, now=NOW + timedelta(hours=1))
    assert again.status == AlertStatus.PENDING and "persists" in again.alert.title, "drift follow-ups are threaded, not held back"
    assert again.alert.fingerprint == first.alert.fingerprint and build_followup(again.alert)[1]
    quiet = decide(replace(finding, run_id="drift w3", flagged=(), summary="fine"), [again, first], settings, now=NOW + timedelta(hours=2))
    assert quiet.alert.kind == AlertKind.RECOVERY and quiet.alert.categories == ("attack_share",)
    assert decide(replace(finding, run_id="drift w4", flagged=()), [quiet, again], settings, now=NOW + timedelta(hours=3)) is None


def test_data_quality_is_held_back_within_the_cooldown_and_never_recovers(settings):
    finding = Finding(Source.PROBE, AlertKind.DATA_QUALITY, "bot", "core", "v2", "r1", problems=("error rate",), summary="error rate 40%")
    first = decide(finding, [], settings, now=NOW)
    assert first.status == AlertStatus.PENDING and first.alert.severity == Severity.WARNING and first.alert.summary == "error rate 40%"
    second = decide(replace(finding, run_id="r2"), [first], settings, now=NOW + timedelta(hours=1))
    assert second.status == AlertStatus.SUPPRESSED
    assert decide(replace(finding, run_id="r3", problems=()), [second, first], settings, now=NOW + timedelta(hours=2)) is None


def test_category_stat_round_trips_through_the_alert(settings):
    alert = decide(regression(Source.PROBE, "r1", "hate"), [], settings, now=NOW).alert
    assert isinstance(alert.comparisons[0].current, CategoryStat) and "hate 2% -> 30%" in alert.summary
