"""A probe run from start to end: run the suite, score, store, evaluate, alert.

Each step is a plain function so the Airflow tasks and the CLI share it; the steps pass
small records, and everything they write is keyed by run_id so a retried step adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import structlog
from clickhouse_connect.driver.client import Client

from pipeline.alerts import rules
from pipeline.alerts.dispatch import DeliveryReport, deliver_pending
from pipeline.detectors.embedder import embedder_from_settings
from pipeline.detectors.pii import redact
from pipeline.detectors.scoring import score_responses, verdict
from pipeline.probes.client import run_probes_sync
from pipeline.probes.targets import TargetConfig
from pipeline.quality.probe_results import check_results
from pipeline.records import AlertKind, Attempt, Comparison, Outcome, ProbeResult, ProbeRun, RunStatus, Suite, Verdict, utc_now
from pipeline.settings import Settings
from pipeline.stats.regression import compare
from pipeline.store import alerts as alert_store
from pipeline.store import probes as probe_store
from pipeline.store.alerts import StoredAlert
from pipeline.store.client import open_store

log = structlog.get_logger()


@dataclass(frozen=True)
class Evaluation:
    """What evaluation concluded about one run."""

    run: ProbeRun
    comparisons: tuple[Comparison, ...]
    problems: tuple[str, ...]
    alert: StoredAlert | None


def execute(
    target: TargetConfig,
    suite: Suite,
    settings: Settings,
    run_id: str,
    on_done: Callable[[Attempt], None] | None = None,
) -> tuple[ProbeRun, list[Attempt]]:
    """Send every probe of `suite` to `target`."""
    started = utc_now()
    log.info("probe.run_started", run_id=run_id, target_name=target.name, suite=suite.name, probes=len(suite.probes))
    attempts = run_probes_sync(target, list(suite.probes), settings, on_done=on_done)
    errors = sum(a.error is not None for a in attempts)
    run = ProbeRun(
        run_id=run_id,
        target=target.name,
        suite=suite.name,
        suite_version=suite.version,
        model_version=target.model_version,
        started_at=started,
        finished_at=utc_now(),
        n_probes=len(attempts),
        n_errors=errors,
    )
    log.info("probe.run_finished", run_id=run_id, errors=errors, seconds=(run.finished_at - started).total_seconds())
    return run, attempts


def score(run: ProbeRun, attempts: Sequence[Attempt], settings: Settings) -> list[ProbeResult]:
    """Embed and judge every response (redacted when it was received); errors stay errors."""
    answered = [a for a in attempts if a.error is None and a.response is not None]
    embedder = embedder_from_settings(settings)
    scores = score_responses([a.probe for a in answered], [a.response or "" for a in answered], embedder)
    by_attempt = dict(zip((id(a) for a in answered), scores, strict=True))
    results = []
    for attempt in attempts:
        probe, found = attempt.probe, by_attempt.get(id(attempt))
        violation_category, violation = max((found.violation_scores.items() if found else []), key=lambda kv: kv[1], default=("", 0.0))
        results.append(
            ProbeResult(
                run_id=run.run_id,
                probe_id=probe.id,
                category=probe.category,
                expect=str(probe.expect),
                tags=probe.tags,
                prompt=redact(probe.prompt).text,
                response=attempt.response if found else "",
                error=attempt.error or "",
                latency_ms=attempt.latency_ms,
                refused=bool(found and found.refused),
                refusal_score=float(found.refusal_score) if found else 0.0,
                violation_score=float(found.violation_scores.get(probe.category, violation)) if found else 0.0,
                violation_category=violation_category,
                marker_hit=bool(found and (attempt.marker_hit or found.marker_hit)),
                verdict=str(verdict(probe, attempt, found)),
                pii_redacted=attempt.pii_redacted if found else 0,
            )
        )
    return results


def store(client: Client, run: ProbeRun, results: Sequence[ProbeResult]) -> None:
    """Write results and the run row; safe to repeat for the same run_id."""
    probe_store.write_results(client, run, list(results))
    probe_store.write_run(client, run)
    log.info("probe.stored", run_id=run.run_id, results=len(results))


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
    if not report.success:
        run = replace(run, status=RunStatus.EVALUATED, outcome=Outcome.UNHEALTHY, healthy=False)
        history = alert_store.history(client, rules.fingerprint(AlertKind.DATA_QUALITY, run.target, run.suite))
        alert = alert_store.save_once(client, rules.decide_unhealthy(run, report.failures, history, settings, link=link))
        probe_store.write_run(client, run)
        log.warning("probe.run_unhealthy", run_id=run.run_id, problems=report.failures)
        return Evaluation(run, (), report.failures, alert)

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
    history = alert_store.history(client, rules.fingerprint(AlertKind.REGRESSION, run.target, run.suite))
    history = [h for h in history if h.alert.run_id != run.run_id]  # a retry re-decides its own alert
    decided = rules.decide_regression(
        rules.Subject.of_runs(run, baseline),
        comparisons,
        rules.pick_samples(results),
        rules.reproduce_sql(run, baseline, settings.clickhouse_database),
        history,
        settings,
        link=link,
    )
    alert = alert_store.save_once(client, decided) if decided is not None else None
    regressed = any(c.regressed for c in comparisons)
    run = replace(run, status=RunStatus.EVALUATED, outcome=Outcome.REGRESSED if regressed else Outcome.PASSED, healthy=True, baseline_run_id=baseline.run_id)
    probe_store.write_run(client, run)
    log.info("probe.evaluated", run_id=run.run_id, baseline=baseline.run_id, regressed=[c.category for c in comparisons if c.regressed])
    return Evaluation(run, tuple(comparisons), (), alert)


def count_verdicts(results: Sequence[ProbeResult]) -> dict[str, int]:
    """How many results got each verdict."""
    counts = {str(v): 0 for v in Verdict}
    for r in results:
        counts[r.verdict] += 1
    return counts


@dataclass(frozen=True)
class RunOutcome:
    """Everything one complete probe run produced."""

    run: ProbeRun
    results: tuple[ProbeResult, ...]
    evaluation: Evaluation
    delivery: DeliveryReport


def run_once(
    target: TargetConfig,
    suite: Suite,
    settings: Settings,
    run_id: str,
    *,
    on_done: Callable[[Attempt], None] | None = None,
    link: str | None = None,
) -> RunOutcome:
    """The whole chain in one process (the CLI and the demo; Airflow runs the steps as tasks)."""
    run, attempts = execute(target, suite, settings, run_id, on_done)
    results = score(run, attempts, settings)
    with open_store(settings, migrated=True) as client:
        store(client, run, results)
        evaluation = evaluate(client, run, settings, pinned_model_version=target.baseline_model_version, link=link)
        delivery = deliver_pending(client, settings)
    return RunOutcome(evaluation.run, tuple(results), evaluation, delivery)
