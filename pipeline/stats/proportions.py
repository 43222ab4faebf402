"""Rates with confidence intervals, and the exact test for "this rate went up"."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

from scipy.stats import boschloo_exact, fisher_exact
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from pipeline.records import CategoryStat

Correction = Literal["holm", "fdr_bh"]

# Boschloo's test maximises over a nuisance parameter, so its cost grows with the table:
# ~0.02 s at 100+100, ~0.25 s at 300+300, ~0.9 s at 500+500. Above this total the two
# tests agree closely anyway, so Fisher's (conditional, a little conservative) takes over.
BOSCHLOO_MAX_TOTAL = 600


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for `successes` out of `n`; (0, 1) when there is no data."""
    _check_counts(successes, n)
    if n == 0:
        return (0.0, 1.0)
    low, high = proportion_confint(successes, n, alpha=1.0 - confidence, method="wilson")
    return (max(0.0, float(low)), min(1.0, float(high)))


def category_stat(category: str, successes: int, n: int) -> CategoryStat:
    """One category's count as a rate with its 95% Wilson interval."""
    low, high = wilson_interval(successes, n)
    return CategoryStat(
        category=category,
        n=n,
        successes=successes,
        rate=successes / n if n else 0.0,
        ci_low=low,
        ci_high=high,
    )


def increase_p_value(base_k: int, base_n: int, cur_k: int, cur_n: int) -> float:
    """One-sided exact p-value for H1: the current rate is greater than the baseline rate.

    Boschloo's exact test (uniformly more powerful than Fisher's) up to
    `BOSCHLOO_MAX_TOTAL` trials in both samples, Fisher's exact test beyond. Returns 1.0
    when either side has no trials: there is nothing to test.
    """
    _check_counts(base_k, base_n)
    _check_counts(cur_k, cur_n)
    if base_n == 0 or cur_n == 0:
        return 1.0
    return _increase_p_value(base_k, base_n, cur_k, cur_n)


# Pure in its four integers; simulations and repeated runs hit the same small tables often.
@lru_cache(maxsize=4096)
def _increase_p_value(base_k: int, base_n: int, cur_k: int, cur_n: int) -> float:
    if base_n + cur_n <= BOSCHLOO_MAX_TOTAL:
        # scipy's Boschloo treats each *column* as one binomial sample, and
        # alternative="greater" means p(column 0) > p(column 1): current goes first.
        table = [[cur_k, base_k], [cur_n - cur_k, base_n - base_k]]
        p = float(boschloo_exact(table, alternative="greater").pvalue)
    else:
        # Fisher's rows are the samples here; "greater" means odds ratio > 1, i.e. the
        # first row (current) has the higher success rate.
        table = [[cur_k, cur_n - cur_k], [base_k, base_n - base_k]]
        p = float(fisher_exact(table, alternative="greater").pvalue)
    if math.isnan(p):
        return 1.0
    return min(1.0, max(0.0, p))


def adjust_p_values(p: Sequence[float], method: Correction) -> list[float]:
    """Adjust a family of p-values: Holm controls the family-wise error, BH the false discovery rate."""
    if method not in ("holm", "fdr_bh"):
        raise ValueError(f"unknown correction {method!r}; valid: fdr_bh, holm")
    if len(p) == 0:
        return []
    _, adjusted, _, _ = multipletests(list(p), method=method)
    return [float(x) for x in adjusted]


def _check_counts(successes: int, n: int) -> None:
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"invalid counts: {successes} successes out of {n}")
