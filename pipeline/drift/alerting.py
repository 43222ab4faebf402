"""When drift becomes an alert: a significant corrected test AND a minimum effect size.

One fingerprint per target (suite "drift"). The first drifted window posts an alert; while
the drift persists each further window is stored as a follow-up of the same fingerprint,
which delivery threads under the first message instead of posting anew; the first window
without drift closes the chain with a recovery.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pipeline.alerts.rules import Subject, alert_id, fingerprint
from pipeline.records import Alert, AlertKind, AlertStatus, Sample, Severity
from pipeline.store.alerts import StoredAlert

SUITE = "drift"


def drift_fingerprint(target: str) -> str:
    """The identity of "traffic of this target drifted", shared by the whole chain."""
    return fingerprint(AlertKind.DRIFT, target, SUITE)


def decide_drift(
    subject: Subject,
    drifted: Sequence[str],
    summary: str,
    samples: Sequence[Sample],
    sql: str,
    history: Sequence[StoredAlert],
    *,
    now: datetime,
    link: str | None = None,
) -> StoredAlert | None:
    """A drift alert (new or a threaded follow-up), a recovery, or None when nothing changed.

    `drifted` names the methods whose corrected p-value is under alpha with an effect over
    the minimum; `history` is the fingerprint's earlier alerts, newest first.
    """
    fp = drift_fingerprint(subject.target)
    open_chain = bool(history) and history[0].alert.kind == AlertKind.DRIFT
    common = dict(
        fingerprint=fp,
        target=subject.target,
        suite=SUITE,
        model_version=subject.model_version,
        run_id=subject.run_id,
        created_at=now,
        baseline_model_version=subject.baseline_model_version,
        baseline_run_id=subject.baseline_run_id,
        sql=sql,
        link=link,
    )
    if drifted:
        verb = "persists" if open_chain else "detected"
        alert = Alert(
            alert_id=alert_id(fp, subject.run_id, AlertKind.DRIFT),
            kind=AlertKind.DRIFT,
            severity=Severity.WARNING,
            title=f"Embedding drift {verb} on {subject.target} ({subject.model_version}): {', '.join(drifted)}",
            summary=summary,
            categories=tuple(drifted),
            samples=tuple(samples)[:3],
            **common,
        )
        return StoredAlert(alert, status=AlertStatus.PENDING)
    if open_chain:
        alert = Alert(
            alert_id=alert_id(fp, subject.run_id, AlertKind.RECOVERY),
            kind=AlertKind.RECOVERY,
            severity=Severity.INFO,
            title=f"Drift over on {subject.target} ({subject.model_version})",
            summary=f"No drift against {subject.baseline_run_id} any more. {summary}",
            categories=history[0].alert.categories,
            **common,
        )
        return StoredAlert(alert, status=AlertStatus.PENDING)
    return None
