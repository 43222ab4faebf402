"""Which answers go to the judge: the band from the settings or the shipped card, and the audit draw."""

from __future__ import annotations

import json

import pytest

from pipeline.detectors.shipped import CARD_FILE, load_head, shipped_path
from pipeline.judge.cascade import JudgeConfigError, audited, band_for_accuracy, band_for_share, band_from_card
from pipeline.judge.client import JudgeConfig
from pipeline.settings import load_settings

TABLE = json.loads(shipped_path(CARD_FILE).read_text())["cascade"]["bands"]


@pytest.fixture(scope="module")
def heads(embedder):
    return load_head(load_settings(), embedder)


def _config(**values) -> JudgeConfig:
    return JudgeConfig.resolve(load_settings(judge_endpoint="http://127.0.0.1:9/v1", judge_model="guard", **values))


def test_the_default_band_holds_the_default_share_of_the_cards_answers(heads) -> None:
    low, high = band_from_card(_config(), heads)
    row = band_for_share(TABLE, 0.3)
    assert (low, high) == (row["low"], row["high"]) and row["share"] >= 0.3
    narrower = [r for r in TABLE if r["high"] - r["low"] < high - low]
    assert all(r["share"] < 0.3 for r in narrower), "the narrowest band that holds the share"


def test_a_target_accuracy_picks_the_narrowest_band_reaching_it(heads) -> None:
    low, high = band_from_card(_config(judge_target_accuracy=0.9), heads)
    row = band_for_accuracy(TABLE, 0.9)
    assert (low, high) == (row["low"], row["high"]) and row["accuracy_outside"] >= 0.9
    best = max(r["accuracy_outside"] for r in TABLE)
    if best < 0.99:
        with pytest.raises(JudgeConfigError, match="SAFEMON_JUDGE_TARGET_ACCURACY"):
            band_from_card(_config(judge_target_accuracy=0.99), heads)


def test_heads_without_a_card_need_an_explicit_band(heads) -> None:
    with pytest.raises(JudgeConfigError, match="SAFEMON_JUDGE_BAND"):
        band_from_card(_config(), None)
    assert _config(judge_band=[0.4, 0.6]).band == (0.4, 0.6)


def test_the_audit_draw_is_stable_per_key_and_near_its_share() -> None:
    keys = [f"sample-{i}" for i in range(20_000)]
    drawn = [audited(k, 0.02) for k in keys]
    assert drawn == [audited(k, 0.02) for k in keys], "a retried batch audits the same rows"
    assert 0.015 < sum(drawn) / len(keys) < 0.025
    assert not any(audited(k, 0.0) for k in keys) and all(audited(k, 1.0) for k in keys)


def test_the_hourly_budget_is_paced_over_the_hour() -> None:
    from pipeline.judge.client import HourlyBudget

    now = [0.0]
    budget = HourlyBudget(3600, clock=lambda: now[0])  # one call a second, 10 seconds' worth at hand
    assert budget.available() == 10
    budget.spend(10)
    assert budget.available() == 0
    now[0] += 4
    assert budget.available() == 4
    now[0] += 3600
    assert budget.available() == 10, "never more than 10 seconds' worth at once"
    assert HourlyBudget(5).available() == 1, "a tiny budget still allows a call"


def test_audits_keep_a_reserve_when_uncertain_answers_would_take_the_whole_budget() -> None:
    from pipeline.judge.cascade import Case, run_cascade
    from pipeline.judge.client import Judge
    from pipeline.judge.standin import JudgeStandin

    cases = [Case(f"u{i}", "p", f"uncertain {i}", 0.5, "refused") for i in range(50)]
    cases += [Case(f"c{i}", "p", f"confident {i}", 0.01, "refused") for i in range(50)]
    with JudgeStandin([], unknown="safe") as standin:
        settings = load_settings(judge_endpoint=standin.url, judge_model="guard", judge_audit_share=1.0)
        outcome = run_cascade(cases, Judge(JudgeConfig.resolve(settings), settings), (0.3, 0.7), allowance=20)
    roles = [j.judge_role for j in outcome.judgements if j.judge_verdict]
    assert outcome.calls == 20 and roles.count("audit") == 2 and roles.count("uncertain") == 18
    assert outcome.dropped == (50 - 18) + (50 - 2)
