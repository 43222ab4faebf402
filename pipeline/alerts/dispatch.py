"""Deliver stored alerts: to Slack when configured, else to the log. Failures stay pending.

With a bot token, each alert also carries a trend chart of its categories (the last runs
of its suite, or the last hours of the stream), drawn from the store's history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, timedelta

import structlog
from clickhouse_connect.driver.client import Client

from pipeline.alerts.charts import TrendPoint, render_trend
from pipeline.alerts.slack import SlackDeliveryError, SlackSink, configured
from pipeline.records import Alert, AlertKind, AlertStatus
from pipeline.settings import Settings
from pipeline.stats.proportions import category_stat
from pipeline.store import alerts as alert_store
from pipeline.store.alerts import StoredAlert

log = structlog.get_logger()

TREND_RUNS = 12  # probe alerts: this many runs of the suite, ending with the alert's
TREND_HOURS = 48  # stream alerts: this many hours, ending with the alert
STREAM_SUITE = "stream"


@dataclass(frozen=True)
class DeliveryReport:
    sent: int = 0
    logged: int = 0
    failed: int = 0


def _thread_of(client: Client, stored: StoredAlert) -> str | None:
    """The Slack thread a follow-up belongs to: the first posted alert of its open chain."""
    root: str | None = None
    for earlier in alert_store.history(client, stored.alert.fingerprint):
        if earlier.alert.alert_id == stored.alert.alert_id or earlier.alert.created_at > stored.alert.created_at:
            continue
        if earlier.alert.kind == AlertKind.RECOVERY:
            break
        if earlier.slack_ts:
            root = earlier.thread_ts or earlier.slack_ts
    return root


def load_trend(client: Client, alert: Alert, runs: int = TREND_RUNS, hours: int = TREND_HOURS) -> list[TrendPoint]:
    """The history an alert's chart shows: its categories' rates with 95% Wilson intervals,
    per run for probe alerts and per hour for stream alerts. Empty when there is none."""
    if not alert.categories:
        return []
    at = alert.created_at if alert.created_at.tzinfo else alert.created_at.replace(tzinfo=UTC)
    params = {"target": alert.target, "suite": alert.suite, "categories": list(alert.categories), "at": at}
    if alert.suite == STREAM_SUITE:
        rows = client.query(
            """
            SELECT hour, category, sum(violations) AS flagged, sum(n) AS samples, argMax(model_version, n) AS version
            FROM violation_rate_by_hour
            WHERE target = {target:String} AND category IN {categories:Array(String)}
              AND hour >= {start:DateTime64(3, 'UTC')} AND hour <= {at:DateTime64(3, 'UTC')}
            GROUP BY hour, category ORDER BY hour
            """,
            parameters={**params, "start": at - timedelta(hours=hours)},
        ).result_rows
    else:
        rows = client.query(
            """
            SELECT any(run_started_at) AS at, category,
                   countIf(verdict IN ('attack_success', 'over_refusal')) AS k, countIf(verdict != 'error') AS n,
                   any(model_version) AS model_version
            FROM probe_results FINAL
            WHERE target = {target:String} AND suite = {suite:String} AND category IN {categories:Array(String)}
              AND run_id IN (
                  SELECT run_id FROM probe_runs FINAL
                  WHERE target = {target:String} AND suite = {suite:String} AND started_at <= {at:DateTime64(3, 'UTC')}
                  ORDER BY started_at DESC LIMIT {runs:UInt32})
            GROUP BY run_id, category ORDER BY at
            """,
            parameters={**params, "runs": runs},
        ).result_rows
    points = []
    for when, category, k, n, model_version in rows:
        if not n:
            continue
        stat = category_stat(category, int(k), int(n))
        points.append(TrendPoint(category, when, stat.rate, stat.ci_low, stat.ci_high, stat.n, model_version))
    return points


def _chart(client: Client, alert: Alert) -> bytes | None:
    """The alert's trend chart as a PNG, or None; a chart never holds up an alert."""
    try:
        points = load_trend(client, alert)
        if not points:
            return None
        metric = "violation rate" if alert.suite == STREAM_SUITE else "ASR / over-refusal"
        return render_trend(points, title=f"{alert.target} / {alert.suite}: {', '.join(alert.categories)}", metric=metric)
    except Exception as exc:  # drawing is best effort; the alert itself matters
        log.warning("alert.chart_failed", alert_id=alert.alert_id, error=str(exc))
        return None


def deliver_pending(client: Client, settings: Settings, sink: SlackSink | None = None) -> DeliveryReport:
    """Send every pending alert once; a failed one keeps its place and is retried next time."""
    sent = logged = failed = 0
    use_slack = configured(settings)
    sink = sink or (SlackSink(settings) if use_slack else None)
    for stored in alert_store.pending(client):
        alert = stored.alert
        bound = log.bind(alert_id=alert.alert_id, kind=str(alert.kind), target_name=alert.target, suite=alert.suite)
        if sink is None:
            bound.warning("alert.logged", title=alert.title, summary=alert.summary)
            alert_store.save(client, stored.with_status(AlertStatus.LOGGED))
            logged += 1
            continue
        thread = _thread_of(client, stored)
        chart = _chart(client, alert) if sink.threads else None
        try:
            delivery = sink.post(alert, thread_ts=thread, chart=chart)
        except SlackDeliveryError as exc:
            bound.error("alert.delivery_failed", error=str(exc), attempts=stored.attempts + 1)
            alert_store.save(client, stored.with_status(AlertStatus.PENDING, attempts=stored.attempts + 1, last_error=str(exc)))
            failed += 1
            continue
        alert_store.save(
            client,
            stored.with_status(
                AlertStatus.SENT,
                attempts=stored.attempts + 1,
                last_error="",
                slack_channel=delivery.channel or "",
                slack_ts=delivery.ts or "",
                thread_ts=thread or "",
            ),
        )
        bound.info("alert.sent", channel=delivery.channel, ts=delivery.ts, thread_ts=thread)
        sent += 1
    return DeliveryReport(sent=sent, logged=logged, failed=failed)
