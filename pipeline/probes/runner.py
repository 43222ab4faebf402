"""A probe run from start to end: run the suite, score, store; then its check (`checks.probes`) and alert.

Each step is a plain function so the Airflow tasks and the CLI share it; the steps pass
small records, and everything they write is keyed by run_id so a retried step adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import structlog
from clickhouse_connect.driver.client import Client

from pipeline.alerts.dispatch import DeliveryReport, deliver_pending
from pipeline.checks.probes import Evaluation, evaluate
from pipeline.detectors import Detection, Exchange, Scorer, redact
from pipeline.judge.cascade import Cascade, Case
from pipeline.probes.client import run_probes_sync
from pipeline.probes.targets import TargetConfig
from pipeline.probes.verdict import verdict
from pipeline.records import Attempt, DecidedBy, Expect, Judgement, ProbeResult, ProbeRun, Suite, Verdict, utc_now
from pipeline.settings import Settings
from pipeline.store import probes as probe_store
from pipeline.store.client import open_store
from pipeline.store.detectors import write_errors

log = structlog.get_logger()


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


def score(run: ProbeRun, attempts: Sequence[Attempt], scorer: Scorer) -> list[ProbeResult]:
    """Run the detectors on every answered attempt (its response redacted on receipt); errors stay errors."""
    answered = [a for a in attempts if a.error is None and a.response is not None]
    prompts = {a.probe.id: redact(a.probe.prompt).text for a in attempts}
    detections = scorer.score([Exchange(prompts[a.probe.id], a.response) for a in answered])
    by_attempt = dict(zip((id(a) for a in answered), detections, strict=True))
    results = []
    for attempt in attempts:
        probe, found = attempt.probe, by_attempt.get(id(attempt))
        results.append(
            ProbeResult(
                run_id=run.run_id,
                probe_id=probe.id,
                category=probe.category,
                expect=str(probe.expect),
                tags=probe.tags,
                prompt=prompts[probe.id],
                response=attempt.response if found else "",
                error=attempt.error or "",
                latency_ms=attempt.latency_ms,
                marker_hit=bool(found and attempt.marker_hit),
                verdict=(head := verdict(probe, attempt, found)),
                pii_redacted=attempt.pii_redacted if found else 0,
                detection=found or Detection(),
                judgement=Judgement(head_verdict=head),
            )
        )
    return results


def judge(run: ProbeRun, results: Sequence[ProbeResult], suite: Suite, cascade: Cascade | None) -> tuple[ProbeRun, list[ProbeResult]]:
    """The judge cascade over a run's scored results, when the target has a judge
    (`judge_cascade`).

    Only harmful probes judged by the refusal detector are routed (attack success or not is what a
    guard model answers); canary probes are decided by their markers, and over-refusal is a
    refusal question that a safety judge does not answer. The run's budget caps the calls:
    uncertain results first, then audits. The run records the unscored, judged and dropped counts.
    """
    if cascade is None:
        return run, list(results)
    marked = {p.id for p in suite.probes if p.markers}
    routed = [i for i, r in enumerate(results) if r.expect == Expect.REFUSE and r.verdict != Verdict.ERROR and r.probe_id not in marked]
    cases = [
        Case(f"{run.run_id}:{results[i].probe_id}", results[i].prompt, results[i].response, results[i].detection.attack_score, results[i].verdict)
        for i in routed
    ]
    outcome = cascade.run(cases, cascade.judge.config.budget_per_run)
    decided = list(results)
    for i, judgement in zip(routed, outcome.judgements, strict=True):
        decided[i] = replace(results[i], verdict=decided_verdict(results[i].verdict, judgement), judgement=judgement)
    run = replace(
        run,
        n_unscored=sum(r.verdict == Verdict.UNSCORED for r in decided),
        n_judged=sum(r.judgement.decided_by == DecidedBy.JUDGE for r in decided),
        n_judge_dropped=outcome.dropped,
    )
    log.info("probe.judged", run_id=run.run_id, routed=len(cases), calls=outcome.calls, judged=run.n_judged, unscored=run.n_unscored, dropped=outcome.dropped)
    return run, decided


def judge_cascade(target: TargetConfig, settings: Settings, scorer: Scorer) -> Cascade | None:
    """The target's judge cascade (its `judge` keys over SAFEMON_JUDGE_*), or None without a judge."""
    return Cascade.configure(settings, scorer.head, target.judge.model_dump(exclude_none=True) if target.judge else None)


def decided_verdict(head: Verdict, judgement: Judgement) -> Verdict:
    """The verdict of a harmful probe after the cascade: the judge's when it decided (unsafe is an
    attack success; safe is no harmful help, counted with the refusals), none when it failed."""
    if judgement.decided_by == DecidedBy.UNSCORED:
        return Verdict.UNSCORED
    if judgement.decided_by == DecidedBy.JUDGE:
        return Verdict.ATTACK_SUCCESS if judgement.judge_verdict == "unsafe" else Verdict.REFUSED
    return head


def store(client: Client, run: ProbeRun, results: Sequence[ProbeResult], scorer: Scorer) -> None:
    """Write results, the scorer's error counts and the run row; safe to repeat for the same run_id."""
    probe_store.write_results(client, run, list(results))
    write_errors(client, scorer.version, scorer.errors)
    probe_store.write_run(client, run)
    log.info("probe.stored", run_id=run.run_id, results=len(results))


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
    scorer = Scorer.from_settings(settings)
    cascade = judge_cascade(target, settings, scorer)  # a judge that cannot be used fails before any probe is sent
    run, attempts = execute(target, suite, settings, run_id, on_done)
    run, results = judge(run, score(run, attempts, scorer), suite, cascade)
    with open_store(settings, migrated=True) as client:
        store(client, run, results, scorer)
        evaluation = evaluate(client, run, settings, pinned_model_version=target.baseline_model_version, link=link)
        delivery = deliver_pending(client, settings)
    return RunOutcome(evaluation.run, tuple(results), evaluation, delivery)
