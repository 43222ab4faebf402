"""The report's charts: time axes in dates at a month's span, heights that follow their rows."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.report import figures
from pipeline.store.history import bucket_for, with_wilson


@pytest.mark.parametrize(
    ("span", "bucket"),
    [
        (timedelta(hours=6), timedelta(hours=1)),
        (timedelta(days=2), timedelta(hours=3)),
        (timedelta(days=7), timedelta(hours=6)),
        (timedelta(days=30), timedelta(days=1)),
    ],
)
def test_buckets_keep_a_few_dozen_points_per_line(span, bucket) -> None:
    assert bucket_for(span) == bucket
    assert span / bucket <= 45


def _violations(days: int, hazards: tuple[str, ...]) -> pd.DataFrame:
    start = datetime(2026, 11, 1, tzinfo=UTC).replace(tzinfo=None)
    rng = np.random.default_rng(0)
    rows = [(start + timedelta(days=d), "prod", h, 1000, int(rng.integers(0, 40))) for d in range(days) for h in hazards]
    return with_wilson(pd.DataFrame(rows, columns=["at", "target", "category", "n", "violations"]), "violations", "n")


def _tick_labels(svg: str) -> list[str]:
    # Text is kept as text in the SVG: tick labels are <text> elements of the x axis group.
    axis = svg[svg.index('id="matplotlib.axis_1"') : svg.index('id="matplotlib.axis_2"')]
    return [t.strip() for t in re.findall(r"<text[^>]*>([^<]*)</text>", axis) if t.strip()]


def test_a_month_of_buckets_reads_as_dates_not_minutes() -> None:
    svg = figures.violation_figure(_violations(30, ("hate", "cybercrime")), "prod")
    labels = _tick_labels(svg)
    assert 3 <= len(labels) <= 9, labels
    assert not any(":" in label for label in labels), labels  # no hour or minute ticks
    assert any(re.fullmatch(r"\d{1,2}|[A-Z][a-z]{2}|\d{4}|[A-Z][a-z]{2} \d{1,2}", label) for label in labels), labels


def test_the_probe_heatmap_is_as_tall_as_its_categories() -> None:
    def heatmap(categories: list[str]) -> float:
        rows = [(datetime(2026, 11, 1) + timedelta(days=d), "bot", "core", "v1", c, 3, 10) for d in range(10) for c in categories]
        asr = with_wilson(pd.DataFrame(rows, columns=["at", "target", "suite", "model_version", "category", "successes", "n"]), "successes", "n")
        svg = figures.asr_heatmap(asr, pd.DataFrame(columns=["target", "suite", "model_version", "at"]), "bot")
        assert all(f">{c}<" in svg for c in categories)  # every category labelled
        return float(re.search(r'<svg[^>]*height="([\d.]+)pt"', svg).group(1))

    assert heatmap(["hate", "cybercrime"]) < heatmap([f"c{i}" for i in range(14)]) < 3 * heatmap(["hate", "cybercrime"]) + 200
