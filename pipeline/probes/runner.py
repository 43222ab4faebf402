"""A probe run from start to end: run the suite, score, store; then its check (`checks.probes`) and alert.

Each step is a plain function so the Airflow tasks and the CLI share it; the steps pass
small records, and everything they write is keyed by run_id so a retried step adds nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import structlog
from clickhouse_connect.driver.client import Client

from pipeline.alerts.dispatch import DeliveryReport, deliver_pending
from pipeline.checks.probes import Evaluation, evaluate
from pipeline.detectors import Detection, Exchange, Scorer, redact
from pipeline.judge.cascade import Cascade, Case
from pipeline.probes.adaptive import AttackerConfig, Attacks, attack_exchange, cut_short, not_sent, rater, turn_expect
from pipeline.probes.client import run_probes_sync
from pipeline.probes.conversation import can_fail, conversation_verdict, failure, running_risk, turn_exchange, turn_verdict, user_turns
from pipeline.probes.targets import TargetConfig
from pipeline.probes.verdict import decided_verdict, verdict
from pipeline.records import Attempt, DecidedBy, Expect, Judgement, Probe, ProbeResult, ProbeRun, StopPolicy, Suite, TurnExpect, TurnResult, Verdict, utc_now
from pipeline.settings import Settings
from pipeline.store import probes as probe_store
from pipeline.store.client import open_store
from pipeline.store.detectors import write_errors

log = structlog.get_logger()
T = TypeVar("T")


def execute(
    target: TargetConfig,
    suite: Suite,
    settings: Settings,
    run_id: str,
    on_done: Callable[[Attempt], None] | None = None,
    scorer: Scorer | None = None,
) -> tuple[ProbeRun, list[Attempt]]:
    """Send every probe of `suite` to `target` (a conversation's turns one by one, an adaptive
    probe's as its attacker writes them). A conversation that stops at its first failure, and an
    adaptive attack, has each turn scored as it comes, with `scorer` (built from the settings when
    not given). A suite with adaptive probes and no attacker fails here, before anything is sent."""
    attacker = AttackerConfig.for_suite(settings, suite, target.attacker.model_dump(exclude_none=True) if target.attacker else None)
    started = utc_now()
    log.info("probe.run_started", run_id=run_id, target_name=target.name, suite=suite.name, probes=len(suite.probes))
    stops = any(p.is_conversation and p.policy == StopPolicy.STOP_ON_FAILURE for p in suite.probes)
    if stops or attacker is not None:
        scorer = scorer or Scorer.from_settings(settings)
    # Turns of conversations and of attacks are scored on threads of their own; the scorer is one.
    lock = threading.Lock()
    fails = _one_at_a_time(lock, turn_fails(scorer)) if stops and scorer else None
    attacks = None
    if attacker and scorer:
        # The judge rates an attack's uncertain answers as it runs (pipeline/probes/adaptive.py).
        cascade = judge_cascade(target, settings, scorer)
        attacks = Attacks(attacker, settings, suite.probes, _one_at_a_time(lock, rater(scorer)), cascade=cascade, run_id=run_id)
    attempts = run_probes_sync(target, list(suite.probes), settings, on_done=on_done, fails=fails, attacks=attacks)
    errors = len({a.probe.id for a in attempts if a.error is not None})
    cut = cut_short(attempts)
    if attacks is not None:
        # A cut attack is stored unscored: a run whose budget cut many measured less than it says.
        report = log.warning if cut else log.info
        report("probe.attacks_done", run_id=run_id, attacker_calls=attacks.calls, budget=attacks.config.budget_per_run, cut=len(cut), cut_probe_ids=cut[:10])
    run = ProbeRun(
        run_id=run_id,
        target=target.name,
        suite=suite.name,
        suite_version=suite.version,
        model_version=target.model_version,
        started_at=started,
        finished_at=utc_now(),
        n_probes=len(suite.probes),
        n_errors=errors,
        n_attacks_cut=len(cut),
        attacker_version=attacker.version(p.attack.method for p in suite.probes if p.attack) if attacker else "",
    )
    log.info("probe.run_finished", run_id=run_id, errors=errors, seconds=(run.finished_at - started).total_seconds())
    return run, attempts


def turn_fails(scorer: Scorer) -> Callable[[Sequence[Attempt]], list[bool]]:
    """Which answered conversation turns fail their conversations. A canary probe's turn is decided
    by its markers and a turn that cannot fail its conversation needs no reading; the rest are
    scored in their context by the refusal and policy heads only (the verdict reads nothing else),
    on `scorer`'s embedder, whose cache the score step then reuses."""
    heads = scorer.only(["refusal_policy"])

    def fails(attempts: Sequence[Attempt]) -> list[bool]:
        read = [a for a in attempts if not a.probe.markers and can_fail(a.probe, a.turn)]
        detections = dict(zip(map(id, read), heads.score([turn_exchange(a.probe, a.turn, a.response or "") for a in read]), strict=True))
        return [turn_verdict(a.probe, a, detections.get(id(a), Detection())) == failure(a.probe) for a in attempts]

    return fails


def score(run: ProbeRun, attempts: Sequence[Attempt], scorer: Scorer) -> list[ProbeResult]:
    """Run the detectors on every answered attempt (its response redacted on receipt) and decide
    each probe's verdict: per turn and for the whole of a conversation or adaptive attack (whose
    attempts carry the prompts sent). Errors stay errors."""
    by_probe: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        by_probe.setdefault(attempt.probe.id, []).append(attempt)
    answered = [a for a in attempts if a.error is None and a.response is not None]
    prompts = {a.probe.id: redact(a.probe.prompt).text for a in attempts if not a.turn}
    exchanges = [_exchange(a, prompts, by_probe[a.probe.id]) for a in answered]
    detections = dict(zip((id(a) for a in answered), scorer.score(exchanges), strict=True))
    results = []
    for probe_attempts in by_probe.values():
        probe = probe_attempts[0].probe
        if probe.is_conversation or probe.is_adaptive:
            results.append(_conversation_result(run, probe, probe_attempts, detections))
            continue
        [attempt] = probe_attempts
        found = detections.get(id(attempt))
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
                risk=found.attack_score if found else 0.0,
            )
        )
    return results


def _exchange(attempt: Attempt, prompts: dict[str, str], siblings: Sequence[Attempt]) -> Exchange:
    """What an answered attempt is scored on: a single prompt's exchange, a scripted turn's or an
    attack's in its context."""
    assert attempt.response is not None
    if attempt.probe.is_adaptive:
        return attack_exchange(attempt, siblings)
    if attempt.turn:
        return turn_exchange(attempt.probe, attempt.turn, attempt.response)
    return Exchange(prompts[attempt.probe.id], attempt.response)


def _turn_plan(probe: Probe, attempt: Attempt) -> tuple[Expect | TurnExpect, str]:
    """What a turn expected and the prompt it sent (redacted): the script's, or the attacker's."""
    if probe.is_adaptive:
        return turn_expect(probe), attempt.prompt or ""
    scripted = user_turns(probe)[attempt.turn - 1]
    return scripted.expect, redact(scripted.content).text


def _conversation_result(run: ProbeRun, probe: Probe, attempts: Sequence[Attempt], detections: dict[int, Detection]) -> ProbeResult:
    """A conversation's (or an adaptive attack's) result: its turns scored, its verdict, and the
    turn that decided it. An attack the attacker budget cut short without a success is unscored."""
    played = [a for a in attempts if not not_sent(a)]
    if not played:
        return _unplayed_result(run, probe)
    found = [detections.get(id(a)) for a in played]
    risks = running_risk([d.attack_score if d else 0.0 for d in found])
    plans = [_turn_plan(probe, a) for a in played]
    heads = [verdict(probe, a, d, expect) for a, d, (expect, _) in zip(played, found, plans, strict=True)]
    turns = tuple(
        TurnResult(
            turn=a.turn,
            expect=str(expect),
            prompt=prompt,
            response=a.response if d else "",
            error=a.error or "",
            latency_ms=a.latency_ms,
            marker_hit=bool(d and a.marker_hit),
            # An attack's turn the judge rated as it ran keeps that rating.
            verdict=decided_verdict(head, a.judgement, expect) if a.judgement else head,
            pii_redacted=a.pii_redacted if d else 0,
            risk=risk,
            detection=d or Detection(),
            judgement=a.judgement or Judgement(head_verdict=head),
        )
        for a, d, risk, head, (expect, prompt) in zip(played, found, risks, heads, plans, strict=True)
    )
    decided, first = conversation_verdict(probe, [t.verdict for t in turns])
    shown = turns[first - 1] if first else turns[-1]
    judgement = Judgement(head_verdict=decided)
    if shown.judgement.judge_role:
        # The turn that decided the attack (its success, or its last) was rated by the judge too.
        judgement = replace(shown.judgement, head_verdict=str(conversation_verdict(probe, heads)[0]))
    if len(played) < len(attempts) and decided in (Verdict.REFUSED, Verdict.COMPLIED_OK):
        # The attack was not finished: no success in the turns it played is no verdict either.
        decided = Verdict.UNSCORED
        judgement = replace(judgement, decided_by=DecidedBy.UNSCORED, unscored_reason=_cut_reason(probe, len(played)))
    return ProbeResult(
        **_about(run, probe),
        prompt=shown.prompt,
        response=shown.response,
        error=next((t.error for t in turns if t.error), ""),
        latency_ms=sum(t.latency_ms for t in turns),
        marker_hit=any(t.marker_hit for t in turns),
        verdict=decided,
        pii_redacted=sum(t.pii_redacted for t in turns),
        detection=shown.detection,
        judgement=judgement,
        n_turns=len(turns),
        first_failure_turn=first,
        risk=risks[-1],
        turns=turns,
    )


def _unplayed_result(run: ProbeRun, probe: Probe) -> ProbeResult:
    """An adaptive probe the attacker budget left no turn: stored, unscored, with its goal as prompt."""
    return ProbeResult(
        **_about(run, probe),
        prompt=redact(probe.prompt).text,
        response="",
        error="",
        latency_ms=0.0,
        marker_hit=False,
        verdict=Verdict.UNSCORED,
        pii_redacted=0,
        detection=Detection(),
        judgement=Judgement(decided_by=DecidedBy.UNSCORED, unscored_reason=_cut_reason(probe, 0)),
        n_turns=0,
    )


def _about(run: ProbeRun, probe: Probe) -> dict[str, Any]:
    """The result columns that say which probe of which run it is."""
    return {"run_id": run.run_id, "probe_id": probe.id, "category": probe.category, "expect": str(probe.expect), "tags": probe.tags}


def _cut_reason(probe: Probe, played: int) -> str:
    limit = probe.attack.max_turns if probe.attack else played
    return f"attacker budget exhausted after {played} of {limit} turns (SAFEMON_ATTACKER_BUDGET_PER_RUN)"


def _one_at_a_time(lock: threading.Lock, fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` under `lock`: scoring threads take turns with the one scorer."""

    def call(*args: Any) -> T:
        with lock:
            return fn(*args)

    return call


def judge(run: ProbeRun, results: Sequence[ProbeResult], suite: Suite, cascade: Cascade | None) -> tuple[ProbeRun, list[ProbeResult]]:
    """The judge cascade over a run's scored results, when the target has a judge
    (`judge_cascade`).

    Only harmful single-prompt probes judged by the refusal detector are routed (attack success or
    not is what a guard model answers); canary probes are decided by their markers, over-refusal is
    a refusal question that a safety judge does not answer, a scripted conversation is decided by
    its turns' detectors, and an adaptive attack was already rated, the judge included, as it ran.
    The run's budget, less the calls the attacks made, caps the calls: uncertain results first,
    then audits. The run records the unscored, judged and dropped counts (without a judge, the
    unscored are adaptive probes the attacker budget cut short).
    """
    if cascade is None:
        return replace(run, n_unscored=sum(r.verdict == Verdict.UNSCORED for r in results)), list(results)
    decided_otherwise = {p.id for p in suite.probes if p.markers or p.is_conversation or p.is_adaptive}
    routed = [i for i, r in enumerate(results) if r.expect == Expect.REFUSE and r.verdict != Verdict.ERROR and r.probe_id not in decided_otherwise]
    cases = [
        Case(f"{run.run_id}:{results[i].probe_id}", results[i].prompt, results[i].response, results[i].detection.attack_score, results[i].verdict)
        for i in routed
    ]
    spent = sum(bool(t.judgement.judge_role) for r in results for t in r.turns)
    outcome = cascade.run(cases, max(0, cascade.judge.config.budget_per_run - spent))
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
    run, attempts = execute(target, suite, settings, run_id, on_done, scorer)
    run, results = judge(run, score(run, attempts, scorer), suite, cascade)
    with open_store(settings, migrated=True) as client:
        store(client, run, results, scorer)
        evaluation = evaluate(client, run, settings, pinned_model_version=target.baseline_model_version, link=link)
        delivery = deliver_pending(client, settings)
    return RunOutcome(evaluation.run, tuple(results), evaluation, delivery)
