"""The report's charts, drawn with matplotlib as inline SVG (no scripts or fonts to fetch).

Each function takes the report's tables and draws one target's chart (or the alerts'),
returning SVG markup. Charts are as tall as their rows and span the time their data covers.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib
import pandas as pd
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator, PercentFormatter

MAX_LINES = 6  # hazards, suites or methods per axes
WIDTH = 11.0  # inches: the page's width at 100 dpi
_XML_HEAD = re.compile(r"^.*?(?=<svg)", re.S)


@contextmanager
def _figure(
    name: str, width: float, height: float, *, left: float = 0.55, right: float = 0.15, top: float = 0.3, bottom: float = 0.35
) -> Iterator[tuple[Figure, list[str]]]:
    """A figure with fixed margins in inches (a layout engine measures every tick label, which
    costs more than the drawing); `left` leaves room for the longest y labels."""
    # A per-chart salt keeps the hashed ids (clip paths, markers) of SVGs inlined into one
    # page from colliding. Text stays text (the page's own font draws it), which keeps the
    # SVG small and quick to write.
    with matplotlib.rc_context({"svg.hashsalt": name, "svg.fonttype": "none", "font.size": 8}):
        figure = Figure(figsize=(width, height))
        figure.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height, wspace=0.18)
        out: list[str] = []
        yield figure, out
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
        out.append(_XML_HEAD.sub("", buffer.getvalue(), count=1))


def _dates(axes, times: pd.Series | None = None) -> None:
    if times is not None and len(times):
        first, last = pd.Timestamp(times.min()), pd.Timestamp(times.max())
        # Sized to the data: the axis spans what was drawn (an instant gets an hour each side).
        pad = max((last - first) * 0.03, pd.Timedelta(hours=1) if first == last else pd.Timedelta(0))
        axes.set_xlim(first - pad, last + pad)
    # Dates, never minute ticks on a month: the locator picks days, hours or months as fits.
    locator = AutoDateLocator(minticks=3, maxticks=8)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.grid(alpha=0.3)


def _band(axes, frame: pd.DataFrame, x: str, label: str) -> None:
    (line,) = axes.plot(frame[x], frame["rate"], marker="o", markersize=2.5, linewidth=1.2, label=label)
    axes.fill_between(frame[x], frame["ci_low"], frame["ci_high"], color=line.get_color(), alpha=0.18, linewidth=0)


def _versions(axes, changes: pd.DataFrame) -> None:
    for at, rows in changes.groupby("at"):
        axes.axvline(at, color="0.35", linestyle="--", linewidth=0.8)
        axes.annotate(
            ", ".join(sorted(set(rows["model_version"]))),
            (at, 0.98),
            xycoords=("data", "axes fraction"),
            fontsize=6.5,
            rotation=90,
            va="top",
            ha="right",
            color="0.3",
        )


def _edges(times: pd.Series) -> list:
    """Cell edges around sorted instants: halfway between neighbours, half a step past the ends."""
    points = list(pd.to_datetime(sorted(times.unique())))
    if len(points) == 1:
        return [points[0] - pd.Timedelta(hours=1), points[0] + pd.Timedelta(hours=1)]
    middles = [a + (b - a) / 2 for a, b in itertools.pairwise(points)]
    return [points[0] - (middles[0] - points[0]), *middles, points[-1] + (points[-1] - middles[-1])]


def asr_heatmap(asr: pd.DataFrame, deploys: pd.DataFrame, target: str) -> str:
    """One target's rates (attack success; over-refusal for benign probes) per category over
    time, pooled over its suites: a row per category, a cell per run or bucket."""
    frame = asr[asr.target == target].groupby(["at", "category"], as_index=False)[["successes", "n"]].sum()
    frame["rate"] = frame["successes"] / frame["n"]
    table = frame.pivot(index="category", columns="at", values="rate").sort_index(ascending=False)
    times = pd.Series(table.columns)
    height = 0.75 + 0.17 * len(table.index)
    longest = max(len(str(c)) for c in table.index)
    with _figure(f"asr-{target}", WIDTH, height, left=0.25 + 0.055 * longest, right=0.9) as (figure, svg):
        axes = figure.add_subplot()
        mesh = axes.pcolormesh(
            _edges(times), range(len(table.index) + 1), table.to_numpy(dtype=float), cmap="Reds", vmin=0, vmax=1, shading="flat", rasterized=True
        )
        axes.set_yticks([i + 0.5 for i in range(len(table.index))], list(table.index))
        changes = deploys[deploys.target == target] if not deploys.empty else deploys
        if not changes.empty:
            _versions(axes, changes)
        _dates(axes)
        axes.grid(False)
        axes.set_xlim(_edges(times)[0], _edges(times)[-1])
        bar = figure.add_axes((1 - 0.75 / WIDTH, axes.get_position().y0, 0.12 / WIDTH, axes.get_position().height))
        figure.colorbar(mesh, cax=bar, format=PercentFormatter(1.0))
        axes.set_title(f"{target}: attack success (over-refusal for benign probes) per category; dashed = model_version change", fontsize=9, loc="left")
    return svg[0]


def category_figure(asr: pd.DataFrame, deploys: pd.DataFrame, target: str, category: str) -> str:
    """One target's category over time, a line per suite with its 95% Wilson band."""
    frame = asr[(asr.target == target) & (asr.category == category)]
    metric = "over-refusal" if category == "over_refusal" else "attack success"
    with _figure(f"asr-{target}-{category}", WIDTH, 2.4) as (figure, svg):
        axes = figure.add_subplot()
        for suite in sorted(frame.suite.unique())[:MAX_LINES]:
            _band(axes, frame[frame.suite == suite], "at", suite)
        changes = deploys[deploys.target == target] if not deploys.empty else deploys
        if not changes.empty:
            _versions(axes, changes)
        axes.set_ylim(0, 1)
        axes.yaxis.set_major_formatter(PercentFormatter(1.0))
        axes.legend(fontsize=7, ncols=MAX_LINES, loc="upper left", frameon=False)
        axes.set_title(f"{target} / {category}: {metric} rate per suite, 95% Wilson band", fontsize=9, loc="left")
        _dates(axes, frame["at"])
    return svg[0]


def violation_figure(violations: pd.DataFrame, target: str) -> str:
    """One target's stream violation rate per hazard over time, the most flagged hazards, with 95% bands."""
    frame = violations[violations.target == target]
    top = frame.groupby("category")["violations"].sum().sort_values(ascending=False).index[:MAX_LINES]
    with _figure(f"violations-{target}", WIDTH, 2.6, left=0.7) as (figure, svg):
        axes = figure.add_subplot()
        for category in top:
            _band(axes, frame[frame.category == category], "at", category)
        axes.set_ylabel("share of samples flagged")
        axes.yaxis.set_major_formatter(PercentFormatter(1.0))
        axes.set_ylim(bottom=0)
        axes.legend(fontsize=7, ncols=MAX_LINES, loc="upper left", frameon=False)
        axes.set_title(f"{target}: production samples flagged, the {len(top)} most flagged hazards (95% band)", fontsize=9, loc="left")
        _dates(axes, frame["at"])
    return svg[0]


def agreement_figure(agreement: pd.DataFrame, target: str) -> str:
    """One target's head-judge agreement on audited verdicts per day, a line per source (probes,
    production samples) with its 95% Wilson band."""
    frame = agreement[agreement.target == target]
    with _figure(f"agreement-{target}", WIDTH, 2.2, left=0.7) as (figure, svg):
        axes = figure.add_subplot()
        for source in sorted(frame.source.unique()):
            rows = frame[frame.source == source]
            _band(axes, rows, "day", f"{source} ({rows.audited.sum():,} audits)")
        axes.set_ylabel("judge agrees")
        axes.yaxis.set_major_formatter(PercentFormatter(1.0))
        axes.set_ylim(max(0.0, float(frame.ci_low.min()) - 0.05), 1.02)
        axes.legend(fontsize=7, ncols=MAX_LINES, loc="lower left", frameon=False)
        axes.set_title(f"{target}: share of audited head verdicts the judge agreed with, per day (95% band)", fontsize=9, loc="left")
        _dates(axes, frame["day"])
    return svg[0]


def first_failure_figure(failures: pd.DataFrame, target: str) -> str:
    """One target's scripted conversations: the share that failed first at each turn, a bar per
    model_version at each turn (one panel per suite); the share that never failed is in the legend."""
    frame = failures[failures.target == target]
    suites = sorted(frame.suite.unique())
    with _figure(f"turns-{target}", WIDTH, 2.2, left=0.7) as (figure, svg):
        for i, suite in enumerate(suites):
            axes = figure.add_subplot(1, len(suites), i + 1)
            rows = frame[frame.suite == suite]
            versions = sorted(rows.model_version.unique())
            turns = sorted(t for t in rows.turn.unique() if t > 0)
            width = 0.8 / max(1, len(versions))
            for j, version in enumerate(versions):
                mine = rows[rows.model_version == version]
                total = int(mine.n.sum())
                held = int(mine.loc[mine.turn == 0, "n"].sum())
                shares = [float(mine.loc[mine.turn == t, "n"].sum()) / total for t in turns]
                axes.bar([t + (j - (len(versions) - 1) / 2) * width for t in turns], shares, width=width, label=f"{version}: {held}/{total} held")
            axes.set_xticks(turns)
            axes.set_xlabel("turn of first failure")
            axes.yaxis.set_major_formatter(PercentFormatter(1.0))
            axes.grid(alpha=0.3, axis="y")
            axes.legend(fontsize=7, loc="upper right", frameon=False)
            axes.set_title(f"{target} / {suite}: conversations by the turn they first failed", fontsize=9, loc="left")
            if i == 0:
                axes.set_ylabel("share of conversations")
    return svg[0]


def drift_figure(drift: pd.DataFrame, target: str, alpha: float, min_effect: float) -> str:
    """One target's drift checks: each method's p-value (log scale) and effect size, with the alert thresholds."""
    frame = drift[drift.target == target]
    with _figure(f"drift-{target}", WIDTH, 2.4) as (figure, svg):
        p_axes, e_axes = figure.subplots(1, 2)
        for method in sorted(frame.method.unique())[:MAX_LINES]:
            rows = frame[frame.method == method]
            tested = rows[rows.p_value.notna()]
            if not tested.empty:
                # A permutation p-value can be 0 at the resolution of its permutations.
                p_axes.plot(tested["at"], tested["p_value"].clip(lower=1e-6), marker="o", markersize=2, linewidth=1.1, label=method)
            e_axes.plot(rows["at"], rows["effect_size"], marker="o", markersize=2, linewidth=1.1, label=method)
        p_axes.axhline(alpha, color="crimson", linestyle="--", linewidth=1, label=f"alert level α={alpha:g}")
        p_axes.set_yscale("log")
        p_axes.set_ylim(top=1.5)
        # Decades only: a labelled minor tick per step of a log axis costs more than the chart.
        p_axes.yaxis.set_major_locator(LogLocator(numticks=6))
        p_axes.yaxis.set_minor_locator(NullLocator())
        # Plain numbers: the default 10^n labels go through the mathtext parser, slowly.
        p_axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        p_axes.set_title(f"{target}: p-value (after correction)", fontsize=9, loc="left")
        e_axes.axhline(min_effect, color="crimson", linestyle="--", linewidth=1, label=f"minimum effect {min_effect:g}")
        e_axes.set_title(f"{target}: effect size", fontsize=9, loc="left")
        for axes in (p_axes, e_axes):
            axes.legend(fontsize=7, loc="best", frameon=False)
            _dates(axes, frame["at"])
    return svg[0]


_KIND_COLOURS = {"regression": "crimson", "recovery": "seagreen", "data_quality": "darkorange", "drift": "royalblue"}
_SEVERITY_SIZES = {"critical": 70, "warning": 40, "info": 25}


def alerts_figure(alerts: pd.DataFrame) -> str | None:
    """Every alert of the period on a time line, one row per target and suite, coloured by kind."""
    if alerts.empty:
        return None
    lanes = sorted({f"{t} / {s}" for t, s in zip(alerts.target, alerts.suite, strict=True)})
    longest = max(len(lane) for lane in lanes)
    with _figure("alerts", WIDTH, 0.3 * len(lanes) + 1.2, left=0.25 + 0.055 * longest, top=0.45) as (figure, svg):
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
