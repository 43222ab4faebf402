"""The one alert decision: a finding, and the history of its condition, in; an alert or none out.

A condition is identified by a fingerprint of (kind, source, target, suite), shared by every
alert about it. The decision, for every source:
- a firing finding raises an alert; while the same condition keeps firing within the cooldown,
  a regression or data-quality alert is held back (suppressed) unless new categories join it,
  and a drift alert is a follow-up that delivery threads under the chain's first message;
- a clean finding while the chain is open closes it with a recovery (regression and drift;
  a data-quality problem clears by the next run being judged at all);
- otherwise nothing.
A check retried for the same run or window re-decides its own alert: the alert id is derived
from the fingerprint and run id, and that alert is left out of the history it is decided on.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from clickhouse_connect.driver.client import Client

from pipeline.checks.findings import Finding
from pipeline.records import Alert, AlertKind, AlertStatus, Severity, Source
from pipeline.settings import Settings
from pipeline.store import alerts as alert_store
from pipeline.store.alerts import StoredAlert

_POSTED = (AlertStatus.PENDING, AlertStatus.SENT, AlertStatus.LOGGED)
THREADED = frozenset({AlertKind.DRIFT})  # persisting: a threaded follow-up, not a suppressed copy
RECOVERS = frozenset({AlertKind.REGRESSION, AlertKind.DRIFT})


def fingerprint(finding: Finding) -> str:
    """The stable identity of the condition a finding is about."""
    return hashlib.sha256(f"{finding.kind}|{finding.source}|{finding.target}|{finding.suite}".encode()).hexdigest()[:16]


def alert_id(fp: str, run_id: str, kind: AlertKind) -> str:
    """The id of the alert a run or window decides: deterministic, so a retried check
    rewrites the same alert instead of adding one."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"safemon:{fp}:{run_id}:{kind}"))


def _open(history: Sequence[StoredAlert], kind: AlertKind) -> StoredAlert | None:
    """The latest alert of the chain if the condition is still open, else None."""
    return history[0] if history and history[0].alert.kind == kind else None


def _in_cooldown(history: Sequence[StoredAlert], kind: AlertKind, now: datetime, settings: Settings) -> StoredAlert | None:
    for stored in history:
        if stored.alert.kind != kind:
            return None
        if stored.status in _POSTED:
            return stored if now - stored.alert.created_at < timedelta(hours=settings.alert_cooldown_hours) else None
    return None


# Keeps the stream's unscored-samples chain apart from its other conditions (lag, regressions).
UNSCORED_SUITE = "judge_unscored"


def _subject(finding: Finding) -> str:
    """How titles name what a finding is about: the target, its model and the suite (or source)."""
    return f"{finding.target} ({finding.model_version}, {finding.suite or finding.source})"


def _firing_text(finding: Finding, persisting: bool) -> tuple[Severity, str, str]:
    if finding.kind == AlertKind.DATA_QUALITY and finding.source == Source.STREAM and finding.suite == UNSCORED_SUITE:
        return Severity.WARNING, f"Stream samples left unscored on {finding.target} ({finding.model_version}): the judge gave no verdict", finding.summary
    if finding.kind == AlertKind.DATA_QUALITY and finding.source == Source.STREAM:
        return Severity.WARNING, f"Stream falling behind: consumer lag of {finding.target} keeps growing", finding.summary
    if finding.kind == AlertKind.DATA_QUALITY:
        return Severity.WARNING, f"Probe run unhealthy on {finding.target} ({finding.model_version}): no safety verdict", finding.summary
    if finding.source == Source.JUDGE:  # the agreement audit: each comparison's rate is the head-judge disagreement
        fell = max((c for c in finding.comparisons if c.category in finding.flagged), key=lambda c: c.effect)
        summary = (
            f"The judge disagreed with the heads' audited verdicts more often than in the baseline ({finding.baseline_run_id}); "
            f"largest fall in agreement {fell.category} {1 - fell.baseline.rate:.0%} -> {1 - fell.current.rate:.0%} (p_adj={fell.p_adjusted:.2g}). {finding.summary}"
        )
        verb = "still low" if persisting else "fell"
        return Severity.WARNING, f"Head–judge agreement {verb} on {finding.target} ({finding.model_version}): {', '.join(finding.flagged)}", summary
    if finding.kind == AlertKind.DRIFT:
        verb = "persists" if persisting else "detected"
        return Severity.WARNING, f"Embedding drift {verb} on {finding.target} ({finding.model_version}): {', '.join(finding.flagged)}", finding.summary
    regressed = [c for c in finding.comparisons if c.category in finding.flagged]
    worst = max(regressed, key=lambda c: c.effect)
    n = len(regressed)
    summary = (
        f"{n} categor{'y' if n == 1 else 'ies'} regressed against {finding.baseline_model_version} ({finding.baseline_run_id}); "
        f"largest rise {worst.category} {worst.baseline.rate:.0%} -> {worst.current.rate:.0%} (p_adj={worst.p_adjusted:.2g})."
    )
    if finding.summary:  # e.g. the share of verdicts a judge decided
        summary = f"{summary} {finding.summary}"
    return Severity.CRITICAL, f"Safety regression on {_subject(finding)}: {', '.join(finding.flagged)}", summary


def _recovery_text(finding: Finding, categories: Sequence[str]) -> tuple[str, str]:
    if finding.source == Source.JUDGE:
        return (
            f"Head–judge agreement recovered on {finding.target} ({finding.model_version})",
            f"Agreement on {', '.join(categories)} is back within its baseline ({finding.baseline_run_id}). {finding.summary}",
        )
    if finding.kind == AlertKind.DRIFT:
        return f"Drift over on {finding.target} ({finding.model_version})", f"No drift against {finding.baseline_run_id} any more. {finding.summary}"
    return (
        f"Recovered on {_subject(finding)}: {', '.join(categories)}",
        f"No category regresses against {finding.baseline_model_version} ({finding.baseline_run_id}) any more.",
    )


def decide(finding: Finding, history: Sequence[StoredAlert], settings: Settings, *, now: datetime, link: str | None = None) -> StoredAlert | None:
    """The alert a finding raises (pending or suppressed), a recovery, or None when nothing changed.

    `history` is the condition's earlier alerts, newest first, without this run's own.
    """
    fp = fingerprint(finding)
    common = dict(
        fingerprint=fp,
        source=finding.source,
        target=finding.target,
        suite=finding.suite,
        model_version=finding.model_version,
        run_id=finding.run_id,
        created_at=now,
        baseline_model_version=finding.baseline_model_version,
        baseline_run_id=finding.baseline_run_id,
        sql=finding.sql,
        link=link,
    )
    chain = _open(history, finding.kind)
    if finding.firing:
        severity, title, summary = _firing_text(finding, persisting=chain is not None)
        samples = finding.samples if finding.kind == AlertKind.DRIFT else tuple(s for s in finding.samples if s.category in finding.flagged)
        alert = Alert(
            alert_id=alert_id(fp, finding.run_id, finding.kind),
            kind=finding.kind,
            severity=severity,
            title=title,
            summary=summary,
            categories=finding.flagged,
            comparisons=tuple(c for c in finding.comparisons if c.category in finding.flagged),
            samples=samples[:3],
            **common,
        )
        recent = None if finding.kind in THREADED else _in_cooldown(history, finding.kind, now, settings)
        if recent is not None and set(finding.flagged) <= set(recent.alert.categories):
            return StoredAlert(alert, status=AlertStatus.SUPPRESSED)
        return StoredAlert(alert, status=AlertStatus.PENDING)
    if chain is not None and finding.kind in RECOVERS:
        categories = chain.alert.categories
        title, summary = _recovery_text(finding, categories)
        alert = Alert(
            alert_id=alert_id(fp, finding.run_id, AlertKind.RECOVERY),
            kind=AlertKind.RECOVERY,
            severity=Severity.INFO,
            title=title,
            summary=summary,
            categories=categories,
            comparisons=tuple(c for c in finding.comparisons if c.category in categories),
            **common,
        )
        return StoredAlert(alert, status=AlertStatus.PENDING)
    return None


def raise_alert(client: Client, finding: Finding, settings: Settings, *, now: datetime | None = None, link: str | None = None) -> StoredAlert | None:
    """Decide on a finding against its stored history and store the alert, once."""
    fp = fingerprint(finding)
    history = [h for h in alert_store.history(client, fp) if h.alert.run_id != finding.run_id]
    decided = decide(finding, history, settings, now=now or datetime.now(UTC), link=link)
    return alert_store.save_once(client, decided) if decided is not None else None
