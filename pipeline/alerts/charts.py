"""Small trend charts for Slack alerts: the alert's categories over recent runs or hours.

A PNG of a few kilobytes, drawn with matplotlib's object API (no pyplot global state, so
it is safe in threads and never opens a window): one line per category with its 95%
Wilson band, model_version changes marked, the newest point emphasised.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

# Wide and short enough to read inline in a Slack thread without opening it.
SIZE_IN = (6.4, 3.0)
DPI = 100
MAX_CATEGORIES = 6


@dataclass(frozen=True)
class TrendPoint:
    """One category's rate at one run or window, with its interval and sample size."""

    category: str
    at: datetime
    rate: float
    ci_low: float
    ci_high: float
    n: int
    model_version: str = ""


def render_trend(points: Sequence[TrendPoint], *, title: str, metric: str = "rate") -> bytes:
    """A PNG of `points`: per category, the rate over time with its band. Raises ValueError
    when there is nothing to draw."""
    if not points:
        raise ValueError("no points to draw")
    # Imported here: matplotlib costs a noticeable start-up, and most importers never draw.
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    by_category: dict[str, list[TrendPoint]] = defaultdict(list)
    for point in sorted(points, key=lambda p: p.at):
        by_category[point.category].append(point)
    # The categories that rose most come first; the rest would only clutter a small chart.
    ranked = sorted(by_category, key=lambda c: by_category[c][-1].rate - by_category[c][0].rate, reverse=True)
    figure = Figure(figsize=SIZE_IN, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    for category in ranked[:MAX_CATEGORIES]:
        series = by_category[category]
        xs = [p.at for p in series]
        (line,) = axes.plot(xs, [p.rate for p in series], marker="o", markersize=3, linewidth=1.5, label=category)
        axes.fill_between(xs, [p.ci_low for p in series], [p.ci_high for p in series], color=line.get_color(), alpha=0.15, linewidth=0)
        axes.plot([xs[-1]], [series[-1].rate], marker="o", markersize=7, color=line.get_color())
    for at, version in _version_changes(points):
        axes.axvline(at, color="0.4", linestyle="--", linewidth=0.8)
        axes.annotate(version, (at, 1.0), xycoords=("data", "axes fraction"), fontsize=7, color="0.3", rotation=90, va="top", ha="right")
    axes.set_ylim(0, 1)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_ylabel(f"{metric} (95% band)", fontsize=8)
    axes.set_title(title, fontsize=9, loc="left")
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", frameon=False)
    figure.autofmt_xdate()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _version_changes(points: Sequence[TrendPoint]) -> list[tuple[datetime, str]]:
    """When the model_version changed along the time axis, and to what."""
    changes, previous = [], None
    for point in sorted(points, key=lambda p: p.at):
        if point.model_version and previous is not None and point.model_version != previous:
            if not changes or changes[-1][1] != point.model_version:
                changes.append((point.at, point.model_version))
        previous = point.model_version or previous
    return changes
