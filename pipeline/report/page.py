"""`safemon report`: one self-contained HTML file of charts and tables over a time span.

Charts are inline SVG and styles inline CSS, so the file opens anywhere without a
network. A few lines of inline script check, once the page has loaded, that every chart
was laid out and drawn, and record it on the page (`data-rendered`), which is what the
headless-browser test reads.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import structlog

from pipeline.report import figures
from pipeline.settings import Settings
from pipeline.store.client import open_store
from pipeline.store.history import History, load_history

log = structlog.get_logger()

_SPAN = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
STEPS = ("read history", "draw probe charts", "draw stream charts", "draw drift charts", "draw alerts", "write page")


def parse_span(text: str) -> timedelta:
    """A span such as `30d`, `12h`, `90m` or `2w`."""
    match = _SPAN.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"span {text!r} must be a positive number followed by m, h, d or w (e.g. 30d)")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@dataclass(frozen=True)
class ReportSummary:
    """What a written report holds."""

    path: Path
    charts: int
    rows_read: int
    seconds: float


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1180px; padding: 16px 24px; color: #1d2230; }
h1 { font-size: 22px; margin-bottom: 2px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #dde; padding-bottom: 4px; }
.meta { color: #667; font-size: 13px; } nav a { margin-right: 14px; font-size: 13px; }
figure.chart { margin: 10px 0 18px; } figure.chart svg { width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; color: #556; } .empty { color: #889; font-style: italic; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; } th, td { border: 1px solid #dde; padding: 3px 8px; text-align: left; }
th { background: #f3f4f8; } td.bad { color: #b00020; font-weight: 600; } td.good { color: #1b7f3b; }
"""

# Marks each chart as rendered when the browser laid it out at a real size and drew into it.
_SCRIPT = """
window.addEventListener('load', function () {
  var charts = document.querySelectorAll('figure.chart'), drawn = 0;
  charts.forEach(function (chart) {
    var svg = chart.querySelector('svg'), box = svg ? svg.getBoundingClientRect() : null;
    var marks = svg ? svg.querySelectorAll('path, use').length : 0;
    var ok = !!box && box.width > 100 && box.height > 50 && marks > 10;
    chart.setAttribute('data-rendered', ok ? 'yes' : 'no');
    if (ok) { drawn += 1; }
  });
  document.body.setAttribute('data-charts', String(charts.length));
  document.body.setAttribute('data-charts-rendered', String(drawn));
});
"""


def _chart(kind: str, title: str, svg: str) -> str:
    return f'<figure class="chart" data-chart="{kind}">{svg}<figcaption>{html.escape(title)}</figcaption></figure>'


def _empty(what: str) -> str:
    return f'<p class="empty">No {html.escape(what)} in this period.</p>'


def _table(frame: pd.DataFrame, marks: dict[str, Callable[[object], str]] | None = None) -> str:
    if frame.empty:
        return _empty("rows")
    marks = marks or {}
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, record, strict=True):
            css = marks[column](value) if column in marks else ""
            text = f"{value:.3g}" if isinstance(value, float) else str(value)
            cells.append(f'<td class="{css}">{html.escape(text)}</td>' if css else f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _outcome_mark(value: object) -> str:
    return {"regressed": "bad", "unhealthy": "bad", "passed": "good"}.get(str(value), "")


def render_page(history: History, sections: dict[str, list[tuple[str, str]]], *, database: str, omitted: dict[str, int]) -> str:
    """The report's HTML from its tables and drawn charts (`sections`: kind -> (title, svg))."""
    span = f"{history.since:%Y-%m-%d %H:%M} to {history.until:%Y-%m-%d %H:%M} UTC"

    def block(kind: str, what: str) -> str:
        charts = sections.get(kind, [])
        if not charts:
            return _empty(what)
        more = omitted.get(kind, 0)
        note = f'<p class="meta">{more} more not drawn; narrow the span or query the views.</p>' if more else ""
        return "".join(_chart(kind, title, svg) for title, svg in charts) + note

    alerts_table = history.alerts.sort_values("created_at", ascending=False).head(50) if not history.alerts.empty else history.alerts
    body = f"""
<h1>safemon report</h1>
<p class="meta">Database <code>{html.escape(database)}</code> · {html.escape(span)} · generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>
<nav><a href="#asr">Probe ASR</a><a href="#violations">Production violations</a><a href="#drift">Drift</a><a href="#alerts">Alerts</a><a href="#corrected">Corrected rates</a><a href="#runs">Latest runs</a></nav>
<h2 id="asr">Attack success rate per category, per probe run</h2>
{block("asr", "probe runs")}
<h2 id="violations">Violation rate per hazard per hour (production stream)</h2>
{block("violations", "scored production samples")}
<h2 id="drift">Embedding drift: p-values and effect sizes</h2>
{block("drift", "drift checks")}
<h2 id="alerts">Alerts</h2>
{block("alerts", "alerts")}
{_table(alerts_table) if not history.alerts.empty else ""}
<h2 id="corrected">Rates measured and corrected for detector error</h2>
<p class="meta">Rogan-Gladen: each rate corrected with the scoring detectors' sensitivity and specificity from their model card; the interval carries the uncertainty of all three. Regression tests compare measured rates of one detector version.</p>
{_table(history.corrected) if not history.corrected.empty else _empty("rates of a detector version with a card")}
<h2 id="runs">Latest run per target and suite</h2>
{_table(history.latest_runs, {"outcome": _outcome_mark, "healthy": lambda v: "" if v else "bad"})}
"""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>safemon report: {html.escape(span)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}<script>{_SCRIPT}</script></body></html>\n"
    )


def write_report(
    settings: Settings,
    span: timedelta,
    out: Path,
    *,
    until: datetime | None = None,
    on_step: Callable[[str], None] | None = None,
) -> ReportSummary:
    """Read the span's history from the store (read-only), draw it and write one HTML file."""
    step = on_step or (lambda _name: None)
    started = time.perf_counter()
    until = until or datetime.now(UTC)
    with open_store(settings, readonly=True) as client:
        history = load_history(client, span, until)
    step(STEPS[0])
    asr = figures.asr_figures(history.asr, history.deploys)
    step(STEPS[1])
    violations = figures.violation_figures(history.violations)
    step(STEPS[2])
    drift = figures.drift_figures(history.drift, settings.drift_alpha, settings.drift_min_effect)
    step(STEPS[3])
    alerts_svg = figures.alerts_figure(history.alerts)
    step(STEPS[4])
    sections = {"asr": asr, "violations": violations, "drift": drift, "alerts": [("alerts by target and suite", alerts_svg)] if alerts_svg else []}
    omitted = {
        "asr": max(0, len(history.asr.groupby(["target", "suite"])) - len(asr)) if not history.asr.empty else 0,
        "violations": max(0, history.violations.target.nunique() - len(violations)) if not history.violations.empty else 0,
        "drift": max(0, history.drift.target.nunique() - len(drift)) if not history.drift.empty else 0,
    }
    page = render_page(history, sections, database=settings.clickhouse_database, omitted=omitted)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    step(STEPS[5])
    summary = ReportSummary(out, sum(len(v) for v in sections.values()), history.rows_read, time.perf_counter() - started)
    log.info("report.written", path=str(out), charts=summary.charts, rows=summary.rows_read, seconds=round(summary.seconds, 2))
    return summary
