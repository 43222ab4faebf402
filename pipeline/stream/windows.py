"""Stream alerts: each hazard's violation rate in the current window against a baseline window.

The current window is the last `stream_window_minutes` before the check; the baseline is
the `stream_baseline_hours` just before it. The same statistics (one-sided exact test,
correction across categories, minimum effect) and the same alert path as probe runs
decide; the alert's suite is "stream".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from clickhouse_connect.driver.client import Client

from pipeline.alerts import rules
from pipeline.records import AlertKind, Comparison, Sample
from pipeline.settings import Settings
from pipeline.stats.proportions import category_stat
from pipeline.stats.regression import compare
from pipeline.store import alerts as alert_store
from pipeline.store.alerts import StoredAlert
from pipeline.store.sql import quoted

log = structlog.get_logger()
SUITE = "stream"


@dataclass(frozen=True)
class WindowCheck:
    """The outcome of one target's window check."""

    target: str
    n_current: int
    n_baseline: int
    comparisons: tuple[Comparison, ...]
    alert: StoredAlert | None
    status: str  # checked | insufficient_data


def _counts(client: Client, target: str, start: datetime, end: datetime) -> tuple[dict[str, tuple[int, int]], str, int]:
    params = {"target": target, "start": start, "end": end}
    where = "target = {target:String} AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}"
    total = client.query(f"SELECT count(), topK(1)(model_version) FROM sample_scores FINAL WHERE {where}", parameters=params).result_rows[0]
    rows = client.query(
        f"""
        SELECT category, countIf(has(flagged_categories, category)) AS k, count() AS n
        FROM sample_scores FINAL ARRAY JOIN mapKeys(violation_scores) AS category
        WHERE {where} GROUP BY category ORDER BY category
        """,
        parameters=params,
    ).result_rows
    model_version = total[1][0] if total[1] else ""
    return {c: (int(k), int(n)) for c, k, n in rows}, model_version, int(total[0])


def _samples(client: Client, target: str, start: datetime, end: datetime) -> tuple[Sample, ...]:
    rows = client.query(
        """
        SELECT sample_id, category, user_text, assistant_text
        FROM sample_scores FINAL ARRAY JOIN flagged_categories AS category
        WHERE target = {target:String} AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
        ORDER BY violation_score DESC LIMIT 50
        """,
        parameters={"target": target, "start": start, "end": end},
    ).result_rows
    return tuple(Sample(*row) for row in rows)


def _sql(target: str, start: datetime, database: str) -> str:
    return (
        f"SELECT hour, category, n, violations, round(rate, 3) AS rate FROM {database}.violation_rate_by_hour\n"
        f"WHERE target = {quoted(target)} AND hour >= {quoted(f'{start:%Y-%m-%d %H:%M:%S}')} ORDER BY category, hour"
    )


def check_target(client: Client, settings: Settings, target: str, end: datetime, *, link: str | None = None) -> WindowCheck:
    """Compare one target's current window with its baseline and decide on an alert."""
    start = end - timedelta(minutes=settings.stream_window_minutes)
    base_start = start - timedelta(hours=settings.stream_baseline_hours)
    current, model_version, n_current = _counts(client, target, start, end)
    baseline, base_version, n_baseline = _counts(client, target, base_start, start)
    if n_current < settings.stream_min_samples or n_baseline < settings.stream_min_samples:
        log.info("stream.window_insufficient", target_name=target, n_current=n_current, n_baseline=n_baseline)
        return WindowCheck(target, n_current, n_baseline, (), None, "insufficient_data")
    comparisons = compare(
        [category_stat(c, *baseline[c]) for c in sorted(baseline)],
        [category_stat(c, *current[c]) for c in sorted(current)],
        alpha=settings.alert_alpha,
        min_effect=settings.alert_min_effect,
        correction=settings.alert_correction,
    )
    subject = rules.Subject(
        target=target,
        suite=SUITE,
        model_version=model_version,
        run_id=f"window {start:%Y-%m-%dT%H:%MZ}..{end:%H:%MZ}",
        baseline_model_version=base_version,
        baseline_run_id=f"window {base_start:%Y-%m-%dT%H:%MZ}..{start:%Y-%m-%dT%H:%MZ}",
    )
    history = [h for h in alert_store.history(client, rules.fingerprint(AlertKind.REGRESSION, target, SUITE)) if h.alert.run_id != subject.run_id]
    decided = rules.decide_regression(
        subject,
        comparisons,
        _samples(client, target, start, end),
        _sql(target, base_start, settings.clickhouse_database),
        history,
        settings,
        link=link,
        now=end,
    )
    alert = alert_store.save_once(client, decided) if decided is not None else None
    log.info("stream.window_checked", target_name=target, n_current=n_current, regressed=[c.category for c in comparisons if c.regressed])
    return WindowCheck(target, n_current, n_baseline, tuple(comparisons), alert, "checked")


def check_all(client: Client, settings: Settings, end: datetime, *, link: str | None = None) -> list[WindowCheck]:
    """Check every target that sent samples in the current window."""
    start = end - timedelta(minutes=settings.stream_window_minutes)
    targets = client.query(
        "SELECT DISTINCT target FROM sample_scores WHERE occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}",
        parameters={"start": start, "end": end},
    ).result_rows
    return [check_target(client, settings, t, end, link=link) for (t,) in targets]
