"""Scripted conversations end to end: the built-in multi-turn suite against a target stand-in over
real HTTP that gives in after k turns, run, scored, stored and read back. The conversation's
verdict and its first failing turn must be exact; a target that never gives in yields no success;
an error mid-conversation makes the conversation an error, never a verdict."""

from __future__ import annotations

import uuid

import pytest

from pipeline.probes.conversation import history, user_turns
from pipeline.probes.replay import ReplayServer
from pipeline.probes.runner import run_once
from pipeline.probes.standin import COMPLIANCE, REFUSAL, Yielding
from pipeline.probes.suites import get_suite
from pipeline.probes.targets import TargetConfig
from pipeline.records import Expect, StopPolicy, TurnExpect, Verdict
from pipeline.store import probes as probe_store
from pipeline.store.client import open_store

SUITE = get_suite("multi_turn")
ATTACKS = [p for p in SUITE.probes if p.expect == Expect.REFUSE]
BENIGN = [p for p in SUITE.probes if p.expect == Expect.COMPLY]


def _first(probe) -> str:
    """What the stand-in knows a conversation by: its first user message (scripted or sent)."""
    return next(t.content for t in probe.turns if t.role == "user")


def _give_in_turns(probe, i: int) -> int:
    """A k for this scenario that varies across scenarios: one of the turns a safe model refuses
    (for a probe with canaries, any turn from the one carrying its document)."""
    turns = user_turns(probe)
    if probe.markers:
        candidates = [k for k, t in enumerate(turns, 1) if any(m in t.content for m in probe.markers)]
        candidates = list(range(candidates[0], len(turns) + 1))
    else:
        candidates = [k for k, t in enumerate(turns, 1) if t.expect == TurnExpect.REFUSE]
    return candidates[i % len(candidates)]


def _run(settings, yielding: Yielding, probes, tmp_name: str):
    suite = SUITE.__class__(name=SUITE.name, version=SUITE.version, description=SUITE.description, probes=tuple(probes))
    with ReplayServer(yielding) as server:
        target = TargetConfig(name=f"bot-{tmp_name}", endpoint=server.url, model_version="v1", max_retries=0)
        outcome = run_once(target, suite, settings, str(uuid.uuid4()))
    with open_store(settings) as client:
        stored = {r.probe_id: r for r in probe_store.read_results(client, outcome.run.run_id)}
        turns = client.query(
            "SELECT probe_id, turn, verdict, risk FROM probe_turns FINAL WHERE run_id = {r:String} ORDER BY probe_id, turn",
            parameters={"r": outcome.run.run_id},
        ).result_rows
        stats = {s.category: s for s in probe_store.category_stats(client, outcome.run.run_id)}
    return outcome, stored, turns, stats


def test_the_conversation_verdict_and_first_failing_turn_are_exact(settings) -> None:
    assert len(SUITE.probes) >= 30
    k = {p.id: _give_in_turns(p, i) for i, p in enumerate(ATTACKS)}
    assert len(set(k.values())) >= 3, "k must vary across the scenarios"
    answers = {_first(p): f"Done. {p.markers[0]}" for p in ATTACKS if p.markers}
    yielding = Yielding({_first(p): k[p.id] for p in ATTACKS}, answers=answers)
    outcome, stored, turns, stats = _run(settings, yielding, ATTACKS, "yields")

    for probe in ATTACKS:
        result = stored[probe.id]
        assert (result.verdict, result.first_failure_turn) == (Verdict.ATTACK_SUCCESS, k[probe.id]), probe.id
        played = k[probe.id] if probe.policy == StopPolicy.STOP_ON_FAILURE else len(user_turns(probe))
        assert result.n_turns == played, f"{probe.id}: the stop policy decides how many turns are played"
        mine = [t for t in turns if t[0] == probe.id]
        assert [t[1] for t in mine] == list(range(1, played + 1)), "every turn played is stored"
        assert mine[k[probe.id] - 1][2] == "attack_success"
        assert all(t[2] != "attack_success" for t in mine[: k[probe.id] - 1])
        risks = [t[3] for t in mine]
        assert risks == sorted(risks), "the running risk never falls"
    # ASR counts conversations, not turns.
    assert sum(s.n for s in stats.values()) == len(ATTACKS)
    assert all(s.successes == s.n for s in stats.values())
    assert outcome.run.n_probes == len(ATTACKS)


def test_a_target_that_never_gives_in_has_no_success_and_benign_conversations_are_finished(settings) -> None:
    never = Yielding({})  # refuses every turn of every conversation
    _, stored, _, _ = _run(settings, never, ATTACKS, "never")
    assert all(r.verdict == Verdict.REFUSED and r.first_failure_turn == 0 for r in stored.values())
    assert all(r.n_turns == len(user_turns(p)) for p, r in ((p, stored[p.id]) for p in ATTACKS)), "nothing failed, so every turn is played"

    # Benign conversations: a target that answers, then refuses from turn k, over-refuses at k.
    k = {p.id: 1 + i % len(user_turns(p)) for i, p in enumerate(BENIGN)}
    refusing = Yielding({_first(p): k[p.id] for p in BENIGN}, before=COMPLIANCE, after=REFUSAL)
    _, stored, _, stats = _run(settings, refusing, BENIGN, "overrefuses")
    for probe in BENIGN:
        assert (stored[probe.id].verdict, stored[probe.id].first_failure_turn) == (Verdict.OVER_REFUSAL, k[probe.id]), probe.id
    assert stats["over_refusal"].successes == len(BENIGN)


def test_an_error_mid_conversation_makes_the_conversation_an_error(settings) -> None:
    probe = next(p for p in ATTACKS if len(user_turns(p)) >= 3 and not p.markers)
    turns = len(user_turns(probe))
    failing = Yielding({_first(probe): turns}, fail_at={_first(probe): 2})
    outcome, stored, rows, stats = _run(settings, failing, [probe], "fails")
    result = stored[probe.id]
    assert result.verdict == Verdict.ERROR and result.first_failure_turn == 0
    assert result.n_turns == 2 and "404" in result.error, "the conversation ends at the failed turn"
    assert [r[2] for r in rows][1:] == ["error"] and rows[0][2] in ("refused", "over_refusal")
    assert outcome.run.n_errors == 1 and all(s.n == 0 for s in stats.values()), "an error is no verdict: out of every denominator"


@pytest.mark.parametrize("scripted", [False, True])
def test_the_target_sees_the_whole_history(settings, scripted) -> None:
    """Each request carries every earlier turn, with the target's own answers in between (and a
    many-shot scenario's scripted exchanges as written)."""
    probe = next(p for p in ATTACKS if any(t.role == "assistant" for t in p.turns) == scripted and len(user_turns(p)) >= (1 if scripted else 3))
    seen: list[list[dict]] = []

    class Recording(Yielding):
        def find(self, model, messages):
            seen.append([m for m in messages if m["role"] != "system"])
            return super().find(model, messages)

    _run(settings, Recording({}), [probe], f"history-{int(scripted)}")
    assert seen == [history(probe, k, [REFUSAL] * (k - 1)) for k in range(1, len(user_turns(probe)) + 1)]
    assert len(seen[-1]) == len(probe.turns) + len(user_turns(probe)) - 1, "the script, and the target's answers but the last"


def test_a_version_that_gives_in_regresses_with_the_same_statistics(settings) -> None:
    """A multi-turn suite is compared across versions like a single-prompt one: per category,
    conversations counted, the same test and correction."""
    k = {p.id: _give_in_turns(p, i) for i, p in enumerate(ATTACKS)}
    answers = {_first(p): f"Done. {p.markers[0]}" for p in ATTACKS if p.markers}
    outcomes = []
    for version, yielding in (("v1", Yielding({})), ("v2", Yielding({_first(p): k[p.id] for p in ATTACKS}, answers=answers))):
        with ReplayServer(yielding) as server:
            target = TargetConfig(name="bot-versions", endpoint=server.url, model_version=version, max_retries=0)
            outcomes.append(run_once(target, SUITE.__class__(SUITE.name, SUITE.version, SUITE.description, tuple(ATTACKS)), settings, str(uuid.uuid4())))
    first, second = outcomes
    assert first.run.outcome == "passed" and second.run.outcome == "regressed"
    regressed = {c.category for c in second.evaluation.comparisons if c.regressed}
    assert "prompt_injection" in regressed, "7 of 7 conversations lost against 0 of 7: significant after correction"
    assert second.evaluation.alert is not None and set(second.evaluation.alert.alert.categories) == regressed
