"""The report's summary: what changed, per target and category, and where each target's drift stands.

The grid holds each target's latest run of every suite (pooled per category) against the span's
earlier runs, decided as a regression alert is decided (pipeline.stats.regression.compare: a
one-sided exact test per category, corrected across the target's categories, and a minimum
rise), so a marked cell is one an alert would have raised on the same counts.
"""

from __future__ import annotations

import gc

import pandas as pd

from pipeline.stats.proportions import Correction, category_stat
from pipeline.stats.regression import compare

GRID_COLUMNS = ["target", "category", "cur_k", "cur_n", "base_k", "base_n", "current", "baseline", "effect", "p_adjusted", "regressed"]


def compare_grid(grid: pd.DataFrame, *, alpha: float, min_effect: float, correction: Correction) -> pd.DataFrame:
    """Each (target, category) cell with its current and baseline rates, corrected p-value and
    whether it regressed; cells without a current or a baseline count are kept, untested."""
    if grid.empty:
        return pd.DataFrame(columns=GRID_COLUMNS)
    # statsmodels' Holm correction runs a full gc.collect() on every call (one per target here);
    # with the heap frozen meanwhile, each collect visits only what the grid allocated.
    gc.freeze()
    try:
        return _compare_grid(grid, alpha=alpha, min_effect=min_effect, correction=correction)
    finally:
        gc.unfreeze()


def _compare_grid(grid: pd.DataFrame, *, alpha: float, min_effect: float, correction: Correction) -> pd.DataFrame:
    cells = []
    for target, rows in grid.groupby("target", sort=True):
        current = [category_stat(r.category, int(r.cur_k), int(r.cur_n)) for r in rows.itertuples()]
        baseline = [category_stat(r.category, int(r.base_k), int(r.base_n)) for r in rows.itertuples()]
        decided = {c.category: c for c in compare(baseline, current, alpha=alpha, min_effect=min_effect, correction=correction)}
        for r in rows.itertuples():
            comparison = decided[r.category]
            cells.append(
                {
                    "target": target,
                    "category": r.category,
                    "cur_k": int(r.cur_k),
                    "cur_n": int(r.cur_n),
                    "base_k": int(r.base_k),
                    "base_n": int(r.base_n),
                    "current": r.cur_k / r.cur_n if r.cur_n else float("nan"),
                    "baseline": r.base_k / r.base_n if r.base_n else float("nan"),
                    "effect": comparison.effect if r.cur_n and r.base_n else float("nan"),
                    "p_adjusted": comparison.p_adjusted,
                    "regressed": comparison.regressed,
                }
            )
    return pd.DataFrame(cells, columns=GRID_COLUMNS)


def drift_status(latest: pd.DataFrame, *, alpha: float, min_effect: float) -> pd.DataFrame:
    """Per target: whether its latest check of any method drifted (significant and large enough),
    the methods that did, and when it was last checked."""
    columns = ["target", "drifting", "methods", "drifted_methods", "last_check", "smallest_p"]
    if latest.empty:
        return pd.DataFrame(columns=columns)
    marked = latest.assign(drifted=(latest.p_value < alpha) & (latest.effect_size >= min_effect))
    rows = []
    for target, checks in marked.groupby("target", sort=True):
        drifted = sorted(checks.loc[checks.drifted, "method"])
        rows.append(
            {
                "target": target,
                "drifting": bool(drifted),
                "methods": ", ".join(sorted(checks.method)),
                "drifted_methods": ", ".join(drifted),
                "last_check": checks["at"].max(),
                "smallest_p": float(checks.p_value.min()),
            }
        )
    return pd.DataFrame(rows, columns=columns)
