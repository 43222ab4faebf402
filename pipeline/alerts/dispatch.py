"""Deliver stored alerts: to Slack when configured, else to the log. Failures stay pending."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from clickhouse_connect.driver.client import Client

from pipeline.alerts.slack import SlackDeliveryError, SlackSink, configured
from pipeline.records import AlertKind
from pipeline.settings import Settings
from pipeline.store import alerts as alert_store
from pipeline.store.alerts import StoredAlert

log = structlog.get_logger()


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


def deliver_pending(client: Client, settings: Settings, sink: SlackSink | None = None) -> DeliveryReport:
    """Send every pending alert once; a failed one keeps its place and is retried next time."""
    sent = logged = failed = 0
    use_slack = configured(settings)
    sink = sink or (SlackSink(settings) if use_slack else None)
    for stored in alert_store.pending(client):
        alert = stored.alert
        bound = log.bind(alert_id=alert.alert_id, kind=str(alert.kind), target=alert.target, suite=alert.suite)
        if sink is None:
            bound.warning("alert.logged", title=alert.title, summary=alert.summary)
            alert_store.save(client, stored.with_status("logged"))
            logged += 1
            continue
        thread = _thread_of(client, stored)
        try:
            delivery = sink.post(alert, thread_ts=thread)
        except SlackDeliveryError as exc:
            bound.error("alert.delivery_failed", error=str(exc), attempts=stored.attempts + 1)
            alert_store.save(client, stored.with_status("pending", attempts=stored.attempts + 1, last_error=str(exc)))
            failed += 1
            continue
        alert_store.save(
            client,
            stored.with_status(
                "sent",
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
