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
from pipeline.records import Alert, AlertKind, AlertStatus, Source
from pipeline.settings import Settings
from pipeline.stats.proportions import category_stat
from pipeline.store import agreement as agreement_store
from pipeline.store import alerts as alert_store
from pipeline.store import probes as probe_store
from pipeline.store import samples as sample_store
from pipeline.store.alerts import StoredAlert

log = structlog.get_logger()

TREND_RUNS = 12  # probe alerts: this many runs of the suite, ending with the alert's
TREND_HOURS = 48  # stream alerts: this many hours, ending with the alert
TREND_DAYS = 14  # agreement alerts: this many days of audits, ending with the alert


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
    per run for probe alerts, per hour for stream alerts and per day for agreement alerts (the
    disagreement rate). Empty when there is none."""
    if not alert.categories or alert.source == Source.DRIFT:
        return []
    at = alert.created_at if alert.created_at.tzinfo else alert.created_at.replace(tzinfo=UTC)
    if alert.source == Source.STREAM:
        rows = sample_store.hourly_rates(client, alert.target, alert.categories, at - timedelta(hours=hours), at)
    elif alert.source == Source.JUDGE:
        rows = agreement_store.daily_disagreement(client, alert.target, alert.categories, at - timedelta(days=TREND_DAYS), at)
    else:
        rows = probe_store.trend(client, alert.target, alert.suite, alert.categories, at, runs)
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
        metric = {Source.STREAM: "violation rate", Source.JUDGE: "head-judge disagreement"}.get(alert.source, "ASR / over-refusal")
        return render_trend(points, title=f"{alert.target} / {alert.scope}: {', '.join(alert.categories)}", metric=metric)
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
