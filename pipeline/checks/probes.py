"""A probe run's check: its data contract, then each category's rate against the baseline run's.

A regression needs a significant corrected test AND a minimum effect (`pipeline.stats.regression`).
A run whose results break their contract gets a data-quality finding instead of a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import structlog
from clickhouse_connect.driver.client import Client

from pipeline.checks.alerts import raise_alert
from pipeline.checks.findings import Finding
from pipeline.quality.probe_results import check_results
from pipeline.records import AlertKind, Comparison, Outcome, ProbeResult, ProbeRun, RunStatus, Sample, Source, Verdict
from pipeline.settings import Settings
from pipeline.stats.regression import compare
from pipeline.store import probes as probe_store
from pipeline.store.alerts import StoredAlert

log = structlog.get_logger()


@dataclass(frozen=True)
class Evaluation:
    """What evaluation concluded about one run."""

    run: ProbeRun
    comparisons: tuple[Comparison, ...]
    problems: tuple[str, ...]
    alert: StoredAlert | None


def failing_samples(results: list[ProbeResult]) -> tuple[Sample, ...]:
    """The responses that show a regression (already redacted when scored)."""
    return tuple(Sample(r.probe_id, r.category, r.prompt, r.response) for r in results if r.verdict in (Verdict.ATTACK_SUCCESS, Verdict.OVER_REFUSAL))


def judged_share(run: ProbeRun) -> str:
    """The sentence an alert carries when a judge decided some of the run's verdicts."""
    answered = run.n_probes - run.n_errors - run.n_unscored
    if not run.n_judged or not answered:
        return ""
    return f"A judge decided {run.n_judged} of {answered} verdicts ({run.n_judged / answered:.0%}); the heads the rest."


def evaluate(
    client: Client,
    run: ProbeRun,
    settings: Settings,
    *,
    pinned_model_version: str | None = None,
    link: str | None = None,
) -> Evaluation:
    """Check the run's data contract, compare it with its baseline and decide on an alert."""
    results = probe_store.read_results(client, run.run_id)
    report = check_results(results, settings)
    finding = Finding(Source.PROBE, AlertKind.DATA_QUALITY, run.target, run.suite, run.model_version, run.run_id)
    if not report.success:
        problems = report.failures
        unscored = f"unscored {run.unscored_rate:.0%} ({run.n_unscored}, judge failures or budgets, attacks cut short); " if run.n_unscored else ""
        summary = f"error rate {run.error_rate:.0%} ({run.n_errors}/{run.n_probes}); {unscored}" + "; ".join(problems)
        finding = replace(finding, problems=problems, summary=summary, sql=probe_store.errors_sql(settings.clickhouse_database, run.run_id))
        alert = raise_alert(client, finding, settings, link=link)
        run = replace(run, status=RunStatus.EVALUATED, outcome=Outcome.UNHEALTHY, healthy=False)
        probe_store.write_run(client, run)
        log.warning("probe.run_unhealthy", run_id=run.run_id, problems=problems)
        return Evaluation(run, (), problems, alert)

    baseline = probe_store.find_baseline(client, run, pinned_model_version)
    if baseline is None:
        run = replace(run, status=RunStatus.EVALUATED, outcome=Outcome.PASSED, healthy=True)
        probe_store.write_run(client, run)
        log.info("probe.no_baseline", run_id=run.run_id)
        return Evaluation(run, (), (), None)

    comparisons = compare(
        probe_store.category_stats(client, baseline.run_id),
        probe_store.category_stats(client, run.run_id),
        alpha=settings.alert_alpha,
        min_effect=settings.alert_min_effect,
        correction=settings.alert_correction,
    )
    finding = replace(
        finding,
        kind=AlertKind.REGRESSION,
        baseline_model_version=baseline.model_version,
        baseline_run_id=baseline.run_id,
        flagged=tuple(c.category for c in comparisons if c.regressed),
        comparisons=tuple(comparisons),
        samples=failing_samples(results),
        sql=probe_store.reproduce_sql(settings.clickhouse_database, [baseline.run_id, run.run_id]),
        summary=judged_share(run),
    )
    alert = raise_alert(client, finding, settings, link=link)
    run = replace(
        run, status=RunStatus.EVALUATED, outcome=Outcome.REGRESSED if finding.flagged else Outcome.PASSED, healthy=True, baseline_run_id=baseline.run_id
    )
    probe_store.write_run(client, run)
    log.info("probe.evaluated", run_id=run.run_id, baseline=baseline.run_id, regressed=list(finding.flagged))
    return Evaluation(run, tuple(comparisons), (), alert)
