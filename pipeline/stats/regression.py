"""Baseline-versus-current comparison per category: exact tests, correction, effect gate."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.records import CategoryStat, Comparison
from pipeline.stats.proportions import Correction, adjust_p_values, increase_p_value


def compare(
    baseline: Sequence[CategoryStat],
    current: Sequence[CategoryStat],
    *,
    alpha: float,
    min_effect: float,
    correction: Correction,
) -> list[Comparison]:
    """Compare each category present in both runs; flag those whose rate rose significantly.

    A category regresses when its corrected one-sided p-value is below `alpha` AND its
    rate rose by at least `min_effect` (absolute). Categories with no trials on either
    side are reported untested (p=1, never regressed) and left out of the correction
    family, so an empty category does not make the others harder to flag.
    Results follow the order of `current`.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    base_by_category = {stat.category: stat for stat in baseline}
    pairs = [(base_by_category[cur.category], cur) for cur in current if cur.category in base_by_category]
    raw = [increase_p_value(base.successes, base.n, cur.successes, cur.n) for base, cur in pairs]
    tested = [base.n > 0 and cur.n > 0 for base, cur in pairs]
    family = iter(adjust_p_values([p for p, t in zip(raw, tested, strict=True) if t], correction))
    adjusted = [next(family) if t else 1.0 for t in tested]
    comparisons = []
    for (base, cur), p, p_adj, was_tested in zip(pairs, raw, adjusted, tested, strict=True):
        effect = cur.rate - base.rate
        comparisons.append(
            Comparison(
                category=cur.category,
                baseline=base,
                current=cur,
                p_value=p,
                p_adjusted=p_adj,
                effect=effect,
                # A small epsilon keeps an effect of exactly min_effect (e.g. 0.3 - 0.2) from
                # failing the gate on floating-point noise.
                regressed=was_tested and p_adj < alpha and effect >= min_effect - 1e-12,
            )
        )
    return comparisons
