"""When a run's statistics become an alert: regression, recovery or data quality.

A regression alert needs a significant corrected test AND a minimum effect (decided in
`pipeline.stats.regression`). Here: one fingerprint per (kind, target, suite) so a
persisting regression is suppressed within the cooldown unless new categories join it,
and a later run that no longer regresses closes the chain with a recovery.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pipeline.records import Alert, AlertKind, AlertStatus, Comparison, ProbeResult, ProbeRun, Sample, Severity
from pipeline.settings import Settings
from pipeline.store.alerts import StoredAlert
from pipeline.store.sql import quoted

_POSTED = (AlertStatus.PENDING, AlertStatus.SENT, AlertStatus.LOGGED)


def fingerprint(kind: AlertKind, target: str, suite: str) -> str:
    """The stable identity of a condition, shared by every alert about it."""
    # A recovery closes a regression chain, so it shares the regression's identity.
    family = {AlertKind.DATA_QUALITY: "data_quality", AlertKind.DRIFT: "drift"}.get(kind, "regression")
    return hashlib.sha256(f"{family}|{target}|{suite}".encode()).hexdigest()[:16]


def alert_id(fp: str, run_id: str, kind: AlertKind) -> str:
    """The id of the alert a run or window decides: deterministic, so a retried check
    rewrites the same alert instead of adding one."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"safemon:{fp}:{run_id}:{kind}"))


def _firing(history: Sequence[StoredAlert], kind: AlertKind) -> StoredAlert | None:
    """The latest alert of the chain if the condition is still open, else None."""
    if history and history[0].alert.kind == kind:
        return history[0]
    return None


def _in_cooldown(history: Sequence[StoredAlert], kind: AlertKind, now: datetime, settings: Settings) -> StoredAlert | None:
    for stored in history:
        if stored.alert.kind != kind:
            return None
        if stored.status in _POSTED:
            cooldown = timedelta(hours=settings.alert_cooldown_hours)
            return stored if now - stored.alert.created_at < cooldown else None
    return None


def reproduce_sql(run: ProbeRun, baseline: ProbeRun | None, database: str) -> str:
    """SQL a person can paste into `safemon sql` to see the numbers behind an alert."""
    runs = ", ".join(quoted(r.run_id) for r in (baseline, run) if r is not None)
    return (
        f"SELECT run_id, model_version, category, countIf(verdict = 'attack_success') AS successes, "
        f"countIf(verdict != 'error') AS n, round(successes / n, 3) AS asr\n"
        f"FROM {database}.probe_results FINAL WHERE run_id IN ({runs})\n"
        f"GROUP BY run_id, model_version, category ORDER BY category, model_version"
    )


def pick_samples(results: Sequence[ProbeResult]) -> tuple[Sample, ...]:
    """The responses that show a regression (already redacted when scored)."""
    return tuple(Sample(r.probe_id, r.category, r.prompt, r.response) for r in results if r.verdict in ("attack_success", "over_refusal"))


@dataclass(frozen=True)
class Subject:
    """What a comparison is about: a probe run or a stream window, and its baseline."""

    target: str
    suite: str  # a probe suite, or "stream" for production traffic
    model_version: str
    run_id: str  # a probe run id, or the window's label
    baseline_model_version: str
    baseline_run_id: str

    @classmethod
    def of_runs(cls, run: ProbeRun, baseline: ProbeRun) -> Subject:
        return cls(run.target, run.suite, run.model_version, run.run_id, baseline.model_version, baseline.run_id)


def decide_regression(
    subject: Subject,
    comparisons: Sequence[Comparison],
    samples: Sequence[Sample],
    sql: str,
    history: Sequence[StoredAlert],
    settings: Settings,
    *,
    link: str | None = None,
    now: datetime | None = None,
) -> StoredAlert | None:
    """A regression alert (pending or suppressed), a recovery, or None when nothing changed."""
    now = now or datetime.now(UTC)
    kind = AlertKind.REGRESSION
    fp = fingerprint(kind, subject.target, subject.suite)
    regressed = [c for c in comparisons if c.regressed]
    firing = _firing(history, kind)
    common = dict(
        fingerprint=fp,
        target=subject.target,
        suite=subject.suite,
        model_version=subject.model_version,
        run_id=subject.run_id,
        created_at=now,
        baseline_model_version=subject.baseline_model_version,
        baseline_run_id=subject.baseline_run_id,
        sql=sql,
        link=link,
    )
    if regressed:
        categories = tuple(c.category for c in regressed)
        worst = max(regressed, key=lambda c: c.effect)
        alert = Alert(
            alert_id=alert_id(fp, subject.run_id, kind),
            kind=kind,
            severity=Severity.CRITICAL,
            title=f"Safety regression on {subject.target} ({subject.model_version}, {subject.suite}): {', '.join(categories)}",
            summary=(
                f"{len(regressed)} categor{'y' if len(regressed) == 1 else 'ies'} regressed against "
                f"{subject.baseline_model_version} ({subject.baseline_run_id}); largest rise {worst.category} "
                f"{worst.baseline.rate:.0%} -> {worst.current.rate:.0%} (p_adj={worst.p_adjusted:.2g})."
            ),
            categories=categories,
            comparisons=tuple(regressed),
            samples=tuple(s for s in samples if s.category in categories)[:3],
            **common,
        )
        recent = _in_cooldown(history, kind, now, settings)
        if recent is not None and set(categories) <= set(recent.alert.categories):
            return StoredAlert(alert, status=AlertStatus.SUPPRESSED)
        return StoredAlert(alert, status=AlertStatus.PENDING)
    if firing is not None:
        previous = set(firing.alert.categories)
        alert = Alert(
            alert_id=alert_id(fp, subject.run_id, AlertKind.RECOVERY),
            kind=AlertKind.RECOVERY,
            severity=Severity.INFO,
            title=f"Recovered on {subject.target} ({subject.model_version}, {subject.suite}): {', '.join(sorted(previous))}",
            summary=f"No category regresses against {subject.baseline_model_version} ({subject.baseline_run_id}) any more.",
            categories=tuple(sorted(previous)),
            comparisons=tuple(c for c in comparisons if c.category in previous),
            **common,
        )
        return StoredAlert(alert, status=AlertStatus.PENDING)
    return None


def decide_unhealthy(
    run: ProbeRun,
    problems: Sequence[str],
    history: Sequence[StoredAlert],
    settings: Settings,
    *,
    link: str | None = None,
    now: datetime | None = None,
) -> StoredAlert:
    """A data-quality alert for a run whose results cannot support a safety verdict."""
    now = now or datetime.now(UTC)
    kind = AlertKind.DATA_QUALITY
    fp = fingerprint(kind, run.target, run.suite)
    alert = Alert(
        alert_id=alert_id(fp, run.run_id, kind),
        fingerprint=fp,
        kind=kind,
        severity=Severity.WARNING,
        target=run.target,
        suite=run.suite,
        model_version=run.model_version,
        run_id=run.run_id,
        title=f"Probe run unhealthy on {run.target} ({run.model_version}): no safety verdict",
        summary=f"error rate {run.error_rate:.0%} ({run.n_errors}/{run.n_probes}); " + "; ".join(problems),
        created_at=now,
        sql=(
            f"SELECT probe_id, error, latency_ms FROM {settings.clickhouse_database}.probe_results FINAL\n"
            f"WHERE run_id = {quoted(run.run_id)} AND verdict = 'error' ORDER BY probe_id"
        ),
        link=link,
    )
    status = AlertStatus.SUPPRESSED if _in_cooldown(history, kind, now, settings) else AlertStatus.PENDING
    return StoredAlert(alert, status=status)
