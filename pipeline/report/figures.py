"""The report's charts, drawn with matplotlib as inline SVG (no scripts or fonts to fetch).

Each function takes the report's tables and returns SVG markup, or None when the period
holds nothing to draw.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib
import pandas as pd
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

MAX_SERIES = 8  # (target, suite) or target panels drawn; the rest are named in the page
MAX_LINES = 8  # categories or methods per axes
_COLUMNS = 4
_XML_HEAD = re.compile(r"^.*?(?=<svg)", re.S)


@contextmanager
def _figure(name: str, width: float, height: float) -> Iterator[tuple[Figure, list[str]]]:
    # A per-chart salt keeps the hashed ids (clip paths, markers) of SVGs inlined into one
    # page from colliding.
    with matplotlib.rc_context({"svg.hashsalt": name, "svg.fonttype": "path", "font.size": 8}):
        figure = Figure(figsize=(width, height), layout="constrained")
        out: list[str] = []
        yield figure, out
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
        out.append(_XML_HEAD.sub("", buffer.getvalue(), count=1))


def _dates(axes, times: pd.Series | None = None) -> None:
    if times is not None and len(times) and times.min() == times.max():
        # One instant: give the date locator a range to put ticks on.
        middle = pd.Timestamp(times.min())
        axes.set_xlim(middle - pd.Timedelta(hours=1), middle + pd.Timedelta(hours=1))
    locator = AutoDateLocator(maxticks=6)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.grid(alpha=0.3)


def _band(axes, frame: pd.DataFrame, x: str, label: str) -> None:
    (line,) = axes.plot(frame[x], frame["rate"], marker="o", markersize=2.5, linewidth=1.2, label=label)
    axes.fill_between(frame[x], frame["ci_low"], frame["ci_high"], color=line.get_color(), alpha=0.18, linewidth=0)


def asr_figures(asr: pd.DataFrame, deploys: pd.DataFrame) -> list[tuple[str, str]]:
    """Per (target, suite): ASR per category over runs, 95% bands, model_version changes marked.
    Returns (title, svg) pairs."""
    if asr.empty:
        return []
    out = []
    series = asr.groupby(["target", "suite"])["at"].max().sort_values(ascending=False).index[:MAX_SERIES]
    for target, suite in series:
        frame = asr[(asr.target == target) & (asr.suite == suite)]
        changes = deploys[(deploys.target == target) & (deploys.suite == suite)] if not deploys.empty else deploys
        categories = sorted(frame.category.unique())
        rows = math.ceil(len(categories) / _COLUMNS)
        title = f"{target} / {suite}"
        with _figure(f"asr-{target}-{suite}", 11, 1.9 * rows + 0.4) as (figure, svg):
            grid = figure.subplots(rows, _COLUMNS, squeeze=False, sharey=True)
            for axes, category in zip(grid.flat, categories, strict=False):
                metric = "over-refusal" if category == "over_refusal" else "ASR"
                _band(axes, frame[frame.category == category], "at", metric)
                for _, change in changes.iterrows():
                    axes.axvline(change["at"], color="0.35", linestyle="--", linewidth=0.8)
                    axes.annotate(
                        change["model_version"],
                        (change["at"], 0.97),
                        xycoords=("data", "axes fraction"),
                        fontsize=6.5,
                        rotation=90,
                        va="top",
                        ha="right",
                        color="0.3",
                    )
                axes.set_title(f"{category} ({metric})", fontsize=8, loc="left")
                axes.set_ylim(0, 1)
                axes.yaxis.set_major_formatter(PercentFormatter(1.0))
                _dates(axes, frame["at"])
            for axes in list(grid.flat)[len(categories) :]:
                axes.set_visible(False)
            figure.suptitle(f"{title}: rate per run, 95% Wilson band; dashed = model_version change", fontsize=9)
        out.append((title, svg[0]))
    return out


def violation_figures(violations: pd.DataFrame) -> list[tuple[str, str]]:
    """Per target: the stream's violation rate per hazard per hour, with 95% bands."""
    if violations.empty:
        return []
    out = []
    targets = violations.groupby("target")["n"].sum().sort_values(ascending=False).index[:MAX_SERIES]
    for target in targets:
        frame = violations[violations.target == target]
        top = frame.groupby("category")["violations"].sum().sort_values(ascending=False).index[:MAX_LINES]
        with _figure(f"violations-{target}", 11, 3.2) as (figure, svg):
            axes = figure.add_subplot()
            for category in top:
                _band(axes, frame[frame.category == category], "hour", category)
            axes.set_ylabel("violation rate (95% band)")
            axes.yaxis.set_major_formatter(PercentFormatter(1.0))
            axes.set_ylim(bottom=0)
            axes.legend(fontsize=7, ncols=4, loc="upper left", frameon=False)
            axes.set_title(f"{target}: flagged samples per hour, top {len(top)} hazards", fontsize=9, loc="left")
            _dates(axes, frame["hour"])
        out.append((target, svg[0]))
    return out


def drift_figures(drift: pd.DataFrame, alpha: float, min_effect: float) -> list[tuple[str, str]]:
    """Per target: each method's p-value (log scale) and effect size, with the alert thresholds."""
    if drift.empty:
        return []
    out = []
    for target in sorted(drift.target.unique())[:MAX_SERIES]:
        frame = drift[drift.target == target]
        with _figure(f"drift-{target}", 11, 3.0) as (figure, svg):
            p_axes, e_axes = figure.subplots(1, 2)
            for method in sorted(frame.method.unique())[:MAX_LINES]:
                rows = frame[frame.method == method]
                tested = rows[rows.p_value.notna()]
                if not tested.empty:
                    # A permutation p-value can be 0 at the resolution of its permutations.
                    p_axes.plot(tested["at"], tested["p_value"].clip(lower=1e-6), marker="o", markersize=2.5, linewidth=1.2, label=method)
                e_axes.plot(rows["at"], rows["effect_size"], marker="o", markersize=2.5, linewidth=1.2, label=method)
            p_axes.axhline(alpha, color="crimson", linestyle="--", linewidth=1, label=f"alert level α={alpha:g}")
            p_axes.set_yscale("log")
            p_axes.set_ylim(top=1.5)
            p_axes.set_title(f"{target}: p-value per check (after correction)", fontsize=9, loc="left")
            e_axes.axhline(min_effect, color="crimson", linestyle="--", linewidth=1, label=f"minimum effect {min_effect:g}")
            e_axes.set_title(f"{target}: effect size per check", fontsize=9, loc="left")
            for axes in (p_axes, e_axes):
                axes.legend(fontsize=7, loc="best", frameon=False)
                _dates(axes, frame["at"])
        out.append((target, svg[0]))
    return out


_KIND_COLOURS = {"regression": "crimson", "recovery": "seagreen", "data_quality": "darkorange", "drift": "royalblue"}
_SEVERITY_SIZES = {"critical": 70, "warning": 40, "info": 25}


def alerts_figure(alerts: pd.DataFrame) -> str | None:
    """Every alert of the period on a time line, one row per target and suite, coloured by kind."""
    if alerts.empty:
        return None
    lanes = sorted({f"{t} / {s}" for t, s in zip(alerts.target, alerts.suite, strict=True)})
    with _figure("alerts", 11, 0.45 * len(lanes) + 1.4) as (figure, svg):
        axes = figure.add_subplot()
        for kind, rows in alerts.groupby("kind"):
            y = [lanes.index(f"{t} / {s}") for t, s in zip(rows.target, rows.suite, strict=True)]
            sizes = [_SEVERITY_SIZES.get(s, 30) for s in rows.severity]
            axes.scatter(rows.created_at, y, s=sizes, color=_KIND_COLOURS.get(str(kind), "grey"), label=str(kind), alpha=0.85, zorder=3)
        axes.set_yticks(range(len(lanes)), lanes)
        axes.set_ylim(-0.7, len(lanes) - 0.3)
        axes.legend(fontsize=7, ncols=4, loc="upper left", bbox_to_anchor=(0, 1.25), frameon=False)
        _dates(axes, alerts["created_at"])
    return svg[0]
