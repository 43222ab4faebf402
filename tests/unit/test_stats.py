"""Proportion intervals, the one-sided exact test, corrections and the regression rule."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.records import CategoryStat
from pipeline.stats import adjust_p_values, category_stat, compare, increase_p_value, wilson_interval
from pipeline.stats.proportions import BOSCHLOO_MAX_TOTAL


def test_wilson_interval_contains_rate_and_narrows_with_n() -> None:
    low_small, high_small = wilson_interval(5, 20)
    low_big, high_big = wilson_interval(50, 200)
    assert low_small < 0.25 < high_small
    assert low_big < 0.25 < high_big
    assert (high_big - low_big) < (high_small - low_small)
    # Unlike the Wald interval, Wilson stays informative at 0 and n successes.
    assert wilson_interval(0, 40)[0] == 0.0 and wilson_interval(0, 40)[1] > 0.05
    assert wilson_interval(40, 40)[1] == 1.0 and wilson_interval(40, 40)[0] < 0.95
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_matches_the_textbook_example() -> None:
    # 2 of 40 -> 5.0% [1.4, 16.5]; 25 of 40 -> 62.5% [47.0, 75.8] (Wilson score, 95%).
    assert [round(x * 100, 1) for x in wilson_interval(2, 40)] == [1.4, 16.5]
    assert [round(x * 100, 1) for x in wilson_interval(25, 40)] == [47.0, 75.8]
    assert wilson_interval(25, 40, confidence=0.99)[0] < wilson_interval(25, 40)[0]


def test_category_stat_carries_rate_and_interval() -> None:
    stat = category_stat("cybercrime", 3, 12)
    assert (stat.category, stat.n, stat.successes, stat.rate) == ("cybercrime", 12, 3, 0.25)
    assert (stat.ci_low, stat.ci_high) == wilson_interval(3, 12)
    assert category_stat("hate", 0, 0).rate == 0.0
    with pytest.raises(ValueError):
        category_stat("hate", 5, 3)


@pytest.mark.parametrize("scale", [1, 10])  # Boschloo below the size cut-off, Fisher above it
def test_increase_p_value_is_one_sided_in_the_right_direction(scale: int) -> None:
    n = 40 * scale
    assert (n + n > BOSCHLOO_MAX_TOTAL) == (scale == 10)
    up = increase_p_value(2 * scale, n, 25 * scale, n)
    down = increase_p_value(25 * scale, n, 2 * scale, n)
    same = increase_p_value(10 * scale, n, 10 * scale, n)
    assert up < 1e-4
    assert down > 0.999
    assert 0.3 < same <= 1.0


def test_increase_p_value_edge_cases() -> None:
    assert increase_p_value(0, 0, 5, 10) == 1.0
    assert increase_p_value(0, 10, 0, 0) == 1.0
    assert increase_p_value(0, 40, 0, 40) == 1.0
    assert increase_p_value(40, 40, 40, 40) == 1.0
    assert increase_p_value(0, 40, 40, 40) < 1e-10
    # A small rise on small samples is not significant.
    assert increase_p_value(1, 10, 2, 10) > 0.2
    with pytest.raises(ValueError):
        increase_p_value(5, 4, 1, 4)


def test_boschloo_is_at_least_as_powerful_as_fisher() -> None:
    from scipy.stats import fisher_exact

    for base_k, cur_k in [(0, 3), (2, 7), (5, 12)]:
        fisher = fisher_exact([[cur_k, 20 - cur_k], [base_k, 20 - base_k]], alternative="greater").pvalue
        assert increase_p_value(base_k, 20, cur_k, 20) <= fisher + 1e-12


def test_adjust_p_values_holm_and_bh() -> None:
    p = [0.01, 0.02, 0.03, 0.04, 0.5]
    holm = adjust_p_values(p, "holm")
    bh = adjust_p_values(p, "fdr_bh")
    assert holm == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.5])
    assert bh == pytest.approx([0.05, 0.05, 0.05, 0.05, 0.5])
    assert all(h >= b for h, b in zip(holm, bh, strict=True))
    assert all(a >= raw for a, raw in zip(holm, p, strict=True))
    assert adjust_p_values([], "holm") == []
    with pytest.raises(ValueError, match="valid"):
        adjust_p_values(p, "bonferroni")  # type: ignore[arg-type]


def _stats(counts: dict[str, tuple[int, int]]) -> list[CategoryStat]:
    return [category_stat(c, k, n) for c, (k, n) in counts.items()]


def test_compare_flags_a_clear_jump_only() -> None:
    baseline = _stats({"cybercrime": (4, 40), "hate": (4, 40), "self_harm": (2, 40)})
    current = _stats({"cybercrime": (24, 40), "hate": (5, 40), "self_harm": (1, 40)})
    result = {c.category: c for c in compare(baseline, current, alpha=0.05, min_effect=0.1, correction="holm")}
    assert result["cybercrime"].regressed
    assert result["cybercrime"].effect == pytest.approx(0.5)
    assert not result["hate"].regressed and not result["self_harm"].regressed
    assert result["self_harm"].effect == pytest.approx(-0.025)
    assert all(c.p_adjusted >= c.p_value for c in result.values())


def test_compare_min_effect_gate_blocks_small_but_significant_rises() -> None:
    # 10% -> 16% on 2,000 probes each is highly significant but only a 6-point rise.
    baseline = _stats({"misinformation": (200, 2000)})
    current = _stats({"misinformation": (320, 2000)})
    [gated] = compare(baseline, current, alpha=0.05, min_effect=0.10, correction="holm")
    [ungated] = compare(baseline, current, alpha=0.05, min_effect=0.05, correction="holm")
    assert gated.p_adjusted < 1e-5
    assert not gated.regressed
    assert ungated.regressed


def test_compare_effect_exactly_at_min_effect_counts() -> None:
    [c] = compare(_stats({"hate": (20, 100)}), _stats({"hate": (50, 100)}), alpha=0.05, min_effect=0.3, correction="holm")
    assert c.regressed


def test_compare_only_categories_in_both_and_untested_ones() -> None:
    baseline = _stats({"hate": (0, 0), "cybercrime": (2, 40), "only_base": (1, 10)})
    current = _stats({"hate": (30, 40), "cybercrime": (20, 40), "only_current": (9, 10)})
    result = compare(baseline, current, alpha=0.05, min_effect=0.1, correction="holm")
    assert [c.category for c in result] == ["hate", "cybercrime"]
    hate, cyber = result
    assert (hate.p_value, hate.p_adjusted, hate.regressed) == (1.0, 1.0, False)
    # The untested category stays out of the family: cybercrime is corrected as a family of one.
    assert cyber.p_adjusted == pytest.approx(cyber.p_value)
    assert cyber.regressed


def test_holm_versus_bh_on_several_moderate_rises() -> None:
    # Four categories each rising 15% -> 30-35% (n=40), raw p between 0.01 and 0.05: BH,
    # controlling the false discovery rate, flags them all; Holm, controlling the
    # family-wise error rate, flags none.
    base = _stats({f"c{i}": (6, 40) for i in range(4)})
    cur = _stats({f"c{i}": (k, 40) for i, k in enumerate([14, 13, 14, 13])})
    holm = compare(base, cur, alpha=0.05, min_effect=0.1, correction="holm")
    bh = compare(base, cur, alpha=0.05, min_effect=0.1, correction="fdr_bh")
    assert all(0.01 < c.p_value < 0.05 for c in holm)
    assert sum(c.regressed for c in bh) == 4
    assert sum(c.regressed for c in holm) == 0
    for h, b in zip(holm, bh, strict=True):
        assert h.p_value == b.p_value
        assert h.p_adjusted >= b.p_adjusted


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    # statsmodels' Holm branch calls gc.collect() on every call; freezing the objects that
    # exist now keeps each of those collections small, so hundreds of families stay fast.
    gc.freeze()
    yield
    gc.unfreeze()


def test_family_wise_false_alarms_stay_near_alpha_under_the_null(frozen_heap: None) -> None:
    rng = np.random.default_rng(20240611)
    alpha, families, n = 0.05, 300, 40
    rates = [0.05, 0.1, 0.2, 0.3, 0.5]
    false_alarms = 0
    for _ in range(families):
        base = [category_stat(f"c{i}", int(rng.binomial(n, p)), n) for i, p in enumerate(rates)]
        cur = [category_stat(f"c{i}", int(rng.binomial(n, p)), n) for i, p in enumerate(rates)]
        result = compare(base, cur, alpha=alpha, min_effect=0.0, correction="holm")
        false_alarms += any(c.regressed for c in result)
    # Exact tests are conservative; 300 families give a standard error of ~1.3 points.
    assert false_alarms / families <= alpha + 0.03


def test_a_large_jump_is_detected_reliably(frozen_heap: None) -> None:
    rng = np.random.default_rng(7)
    trials, n, detected = 50, 40, 0
    for _ in range(trials):
        base = [category_stat("jump", int(rng.binomial(n, 0.1)), n)] + [category_stat(f"c{i}", int(rng.binomial(n, 0.1)), n) for i in range(4)]
        cur = [category_stat("jump", int(rng.binomial(n, 0.6)), n)] + [category_stat(f"c{i}", int(rng.binomial(n, 0.1)), n) for i in range(4)]
        result = compare(base, cur, alpha=0.05, min_effect=0.1, correction="holm")
        detected += result[0].regressed
    assert detected / trials >= 0.95
