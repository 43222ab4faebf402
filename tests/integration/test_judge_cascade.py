"""The judge cascade on the probe path: a recorded judge over real HTTP decides the harmful probes
the heads are unsure of, audits a share of the rest, and its failures are never verdicts."""

from __future__ import annotations

import uuid
from importlib.resources import files

import pytest

from pipeline.judge.standin import Fault, JudgeStandin
from pipeline.probes.replay import ReplayServer
from pipeline.probes.runner import run_once
from pipeline.probes.suites import get_suite
from pipeline.probes.targets import TargetConfig
from pipeline.records import DecidedBy, Verdict
from pipeline.settings import ConfigError
from pipeline.store import probes as probe_store
from pipeline.store.client import open_store

BAND = (0.2, 0.8)
SUITE = get_suite("demo")
MARKED = {p.id for p in SUITE.probes if p.markers}


@pytest.fixture(scope="module")
def replay():
    with ReplayServer(files("pipeline.demo") / "recording.jsonl") as server:
        yield server


@pytest.fixture
def judge():
    with JudgeStandin([], unknown="unsafe", model="guard-standin") as standin:
        yield standin


def _run(settings, replay, judge, **judge_settings):
    settings = settings.model_copy(
        update={"judge_endpoint": judge.url, "judge_model": "llama-guard-3-8b", "judge_band": BAND, "judge_timeout_s": 2.0, **judge_settings}
    )
    target = TargetConfig(name="bot", endpoint=replay.url, model_version="v1")
    outcome = run_once(target, SUITE, settings, str(uuid.uuid4()))
    with open_store(settings) as client:
        stored = probe_store.read_results(client, outcome.run.run_id)
        run = probe_store.read_run(client, outcome.run.run_id)
        stats = {s.category: s for s in probe_store.category_stats(client, run.run_id)}
    return outcome, stored, run, stats


def _routed(results):
    return [r for r in results if r.expect == "refuse" and r.probe_id not in MARKED]


def test_the_judge_decides_the_uncertain_harmful_probes_and_the_heads_the_rest(settings, replay, judge) -> None:
    outcome, stored, run, _ = _run(settings, replay, judge, judge_audit_share=0.0)
    uncertain = [r for r in _routed(stored) if BAND[0] <= r.detection.attack_score < BAND[1]]
    assert uncertain, "the demo run must have answers the heads are unsure of"
    assert judge.counts.completions == len(uncertain)
    for r in stored:
        inside = r in uncertain
        j = r.judgement
        assert j.decided_by == (DecidedBy.JUDGE if inside else DecidedBy.HEAD)
        if inside:  # the recorded judge says unsafe to everything it does not know
            assert (r.verdict, j.judge_verdict, j.judge_role) == (Verdict.ATTACK_SUCCESS, "unsafe", "uncertain")
            assert j.judge_model == "llama-guard-3-8b" and j.judge_version == "llama-guard-3-8b+llama_guard.v1" and j.judge_latency_ms > 0
        else:
            assert (j.judge_role, j.judge_verdict, str(r.verdict)) == ("", "", j.head_verdict)
    assert run.n_judged == len(uncertain) and run.n_unscored == 0 and run.n_judge_dropped == 0
    assert outcome.run.healthy


def test_judge_failures_leave_rows_unscored_out_of_the_denominator_and_the_run_unhealthy(settings, replay, judge) -> None:
    judge.inject(*[Fault.server_error(503)] * 200)
    _, stored, run, stats = _run(settings, replay, judge, judge_max_retries=0, judge_audit_share=0.0, judge_max_unscored_rate=0.01)
    unscored = [r for r in stored if r.verdict == Verdict.UNSCORED]
    assert unscored and all(r.judgement.decided_by == DecidedBy.UNSCORED and "HTTP 503" in r.judgement.unscored_reason for r in unscored)
    assert not any(r.verdict in (Verdict.ATTACK_SUCCESS, Verdict.REFUSED) for r in unscored), "a failure is never a verdict"
    per_category = {}
    for r in stored:
        per_category.setdefault(r.category, []).append(r)
    for category, rows in per_category.items():
        assert stats[category].n == sum(r.verdict not in (Verdict.ERROR, Verdict.UNSCORED) for r in rows)
    assert run.n_unscored == len(unscored)
    assert not run.healthy and run.outcome == "unhealthy", "too many unscored rows are a data-quality problem"


@pytest.mark.parametrize(
    "fault, reason",
    [(Fault.timeout(4.0), "timeout"), (Fault.malformed("probably fine"), "unparseable"), (Fault.refusal(), "judge refused"), (Fault.invalid_json(), "JSON")],
)
def test_each_kind_of_judge_failure_is_unscored_with_its_reason(settings, replay, judge, fault, reason) -> None:
    judge.inject(*[fault] * 200)
    _, stored, _, _ = _run(settings, replay, judge, judge_max_retries=0, judge_audit_share=0.0, judge_timeout_s=1.0)
    uncertain = [r for r in _routed(stored) if BAND[0] <= r.detection.attack_score < BAND[1]]
    assert uncertain and all(r.verdict == Verdict.UNSCORED and reason in r.judgement.unscored_reason for r in uncertain)


def test_the_run_budget_caps_calls_and_the_dropped_are_stored(settings, replay, judge) -> None:
    _, stored, run, _ = _run(settings, replay, judge, judge_budget_per_run=2, judge_audit_share=0.0)
    uncertain = [r for r in _routed(stored) if BAND[0] <= r.detection.attack_score < BAND[1]]
    assert len(uncertain) > 2
    assert judge.counts.requests == 2
    dropped = [r for r in uncertain if r.judgement.unscored_reason == "judge budget exhausted"]
    assert len(dropped) == len(uncertain) - 2 and all(r.verdict == Verdict.UNSCORED for r in dropped)
    assert run.n_judge_dropped == len(dropped)


def test_audits_rate_confident_verdicts_without_deciding_them(settings, replay) -> None:
    # The recording says safe to every harmful-probe answer: audits of attack successes disagree.
    with JudgeStandin([], unknown="safe") as judge:
        _, stored, run, _ = _run(settings, replay, judge, judge_audit_share=1.0)
    audits = [r for r in stored if r.judgement.judge_role == "audit"]
    confident = [r for r in _routed(stored) if not BAND[0] <= r.detection.attack_score < BAND[1]]
    assert {r.probe_id for r in audits} == {r.probe_id for r in confident}
    assert all(r.judgement.decided_by == DecidedBy.HEAD and r.judgement.judge_verdict == "safe" and str(r.verdict) == r.judgement.head_verdict for r in audits)
    assert run.n_judged == len(_routed(stored)) - len(confident)


def test_a_target_can_turn_the_judge_off(settings, replay, judge, tmp_path) -> None:
    from pipeline.probes.targets import load_targets

    path = tmp_path / "targets.yaml"
    path.write_text(
        f"judge: {{endpoint: '{judge.url}', model: guard, band: [0.2, 0.8]}}\n"
        f"targets:\n  - {{name: a, endpoint: '{replay.url}', model_version: v1}}\n"
        f"  - {{name: b, endpoint: '{replay.url}', model_version: v1, judge: {{enabled: false}}}}\n"
        f"  - {{name: c, endpoint: '{replay.url}', model_version: v1, judge: {{format: rubric}}}}\n"
    )
    a, b, c = load_targets(path)
    assert a.judge.endpoint == judge.url and a.judge.band == (0.2, 0.8)
    assert b.judge.enabled is False
    assert (c.judge.format, c.judge.endpoint) == ("rubric", judge.url)
    outcome = run_once(b, SUITE, settings, str(uuid.uuid4()))
    assert judge.counts.requests == 0 and outcome.run.n_judged == 0


def test_a_regression_alert_names_the_share_a_judge_decided(settings, replay) -> None:
    # A judge that calls every uncertain answer safe: v2's regression is in its confident answers.
    with JudgeStandin([], unknown="safe") as judge:
        _run(settings, replay, judge, judge_audit_share=0.0)
        update = {"judge_endpoint": judge.url, "judge_model": "guard", "judge_band": BAND, "judge_audit_share": 0.0}
        settings = settings.model_copy(update=update)
        outcome = run_once(TargetConfig(name="bot", endpoint=replay.url, model_version="v2"), SUITE, settings, str(uuid.uuid4()))
    assert outcome.run.outcome == "regressed" and outcome.run.n_judged > 0
    alert = outcome.evaluation.alert.alert
    assert f"A judge decided {outcome.run.n_judged} of" in alert.summary


def test_a_judge_that_cannot_be_used_fails_at_start_naming_the_setting(settings, replay, judge, monkeypatch) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.settings import get_settings
    from pipeline.stream.batch import StreamScorer

    # The exemplar detectors have no card, so no band can be read from one.
    settings.targets_file.write_text(f"targets:\n  - {{name: bot, endpoint: '{replay.url}', model_version: v1}}\n")
    env = {"SAFEMON_CLICKHOUSE_DSN": settings.clickhouse_dsn, "SAFEMON_CLICKHOUSE_DATABASE": settings.clickhouse_database,
           "SAFEMON_TARGETS_FILE": str(settings.targets_file), "SAFEMON_DETECTOR_DEFAULTS": "exemplars",
           "SAFEMON_JUDGE_ENDPOINT": judge.url, "SAFEMON_JUDGE_MODEL": "guard"}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["probe", "run", "--suite", "demo", "--target", "bot"])
        assert result.exit_code == 2 and "SAFEMON_JUDGE_BAND" in result.output, result.output
        assert judge.counts.requests == 0
        with pytest.raises(ConfigError, match="SAFEMON_JUDGE_BAND"):
            StreamScorer(get_settings())
        monkeypatch.setenv("SAFEMON_JUDGE_MODEL", "")
        get_settings.cache_clear()
        with pytest.raises(ConfigError, match="SAFEMON_JUDGE_MODEL"):
            StreamScorer(get_settings())
    finally:
        get_settings.cache_clear()
