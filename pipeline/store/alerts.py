"""Alerts in ClickHouse: stored before they are sent, one new version per state change."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client

from pipeline.records import Alert, AlertKind, AlertStatus, CategoryStat, Comparison, Sample, Severity, Source

_COLUMNS = [
    "alert_id",
    "fingerprint",
    "kind",
    "severity",
    "source",
    "target",
    "suite",
    "model_version",
    "baseline_model_version",
    "run_id",
    "baseline_run_id",
    "categories",
    "title",
    "summary",
    "details",
    "created_at",
    "status",
    "attempts",
    "last_error",
    "slack_channel",
    "slack_ts",
    "thread_ts",
    "updated_at",
]


@dataclass(frozen=True)
class StoredAlert:
    """An alert and where it stands: pending, sent, logged (no Slack configured) or suppressed."""

    alert: Alert
    status: AlertStatus
    attempts: int = 0
    last_error: str = ""
    slack_channel: str = ""
    slack_ts: str = ""
    thread_ts: str = ""

    def with_status(self, status: AlertStatus, **changes: object) -> StoredAlert:
        return replace(self, status=status, **changes)  # type: ignore[arg-type]


def _details(alert: Alert) -> str:
    return json.dumps(
        {
            "comparisons": [asdict(c) for c in alert.comparisons],
            "samples": [asdict(s) for s in alert.samples],
            "sql": alert.sql,
            "link": alert.link,
        }
    )


def _alert_from_row(row: dict) -> Alert:
    details = json.loads(row["details"] or "{}")
    comparisons = tuple(
        Comparison(**{**c, "baseline": CategoryStat(**c["baseline"]), "current": CategoryStat(**c["current"])}) for c in details.get("comparisons", [])
    )
    created = row["created_at"]
    return Alert(
        alert_id=row["alert_id"],
        fingerprint=row["fingerprint"],
        kind=AlertKind(row["kind"]),
        severity=Severity(row["severity"]),
        source=Source(row["source"]),
        target=row["target"],
        suite=row["suite"],
        model_version=row["model_version"],
        run_id=row["run_id"],
        title=row["title"],
        summary=row["summary"],
        created_at=created if created.tzinfo else created.replace(tzinfo=UTC),
        baseline_model_version=row["baseline_model_version"],
        baseline_run_id=row["baseline_run_id"],
        categories=tuple(row["categories"]),
        comparisons=comparisons,
        samples=tuple(Sample(**s) for s in details.get("samples", [])),
        sql=details.get("sql", ""),
        link=details.get("link"),
    )


def save(client: Client, stored: StoredAlert) -> None:
    """Insert the alert's current state as a new version."""
    a = stored.alert
    row = [
        a.alert_id,
        a.fingerprint,
        str(a.kind),
        a.severity,
        a.source,
        a.target,
        a.suite,
        a.model_version,
        a.baseline_model_version,
        a.run_id,
        a.baseline_run_id,
        list(a.categories),
        a.title,
        a.summary,
        _details(a),
        a.created_at,
        stored.status,
        stored.attempts,
        stored.last_error,
        stored.slack_channel,
        stored.slack_ts,
        stored.thread_ts,
        datetime.now(UTC),
    ]
    client.insert("alerts", [row], column_names=_COLUMNS)


def save_once(client: Client, stored: StoredAlert) -> StoredAlert:
    """Save a new alert; when a retried check decides the same alert again, keep the stored one
    (it may have been sent already)."""
    existing = get(client, stored.alert.alert_id)
    if existing is not None:
        return existing
    save(client, stored)
    return stored


def _select(client: Client, where: str, parameters: dict, tail: str = "") -> list[StoredAlert]:
    result = client.query(f"SELECT {', '.join(_COLUMNS)} FROM alerts FINAL WHERE {where} {tail}", parameters=parameters)
    alerts = []
    for values in result.result_rows:
        row = dict(zip(_COLUMNS, values, strict=True))
        alerts.append(
            StoredAlert(
                alert=_alert_from_row(row),
                status=AlertStatus(row["status"]),
                attempts=row["attempts"],
                last_error=row["last_error"],
                slack_channel=row["slack_channel"],
                slack_ts=row["slack_ts"],
                thread_ts=row["thread_ts"],
            )
        )
    return alerts


def get(client: Client, alert_id: str) -> StoredAlert | None:
    """One alert by id, or None."""
    found = _select(client, "alert_id = {id:String}", {"id": alert_id})
    return found[0] if found else None


def history(client: Client, fingerprint: str) -> list[StoredAlert]:
    """Every alert of a fingerprint, newest first."""
    return _select(client, "fingerprint = {fp:String}", {"fp": fingerprint}, "ORDER BY created_at DESC, updated_at DESC")


def pending(client: Client) -> list[StoredAlert]:
    """Alerts waiting to be delivered, oldest first (including earlier failed attempts)."""
    return _select(client, "status = 'pending'", {}, "ORDER BY created_at")
