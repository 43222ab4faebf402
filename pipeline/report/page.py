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
from pipeline.report.summary import compare_grid, drift_status
from pipeline.settings import Settings
from pipeline.store.client import open_store
from pipeline.store.history import CORRECTED_STREAM, History, load_history

log = structlog.get_logger()

_SPAN = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
STEPS = ("read history", "draw charts", "write page")


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
    query_seconds: float = 0.0  # reading the history from the store
    draw_seconds: float = 0.0  # drawing the charts and writing the page


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1180px; padding: 16px 24px; color: #1d2230; }
h1 { font-size: 22px; margin-bottom: 2px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #dde; padding-bottom: 4px; }
h3 { font-size: 14px; margin: 18px 0 4px; }
.meta { color: #667; font-size: 13px; } nav a { margin-right: 14px; font-size: 13px; }
figure.chart { margin: 10px 0 18px; } figure.chart svg { width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; color: #556; } .empty { color: #889; font-style: italic; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; } th, td { border: 1px solid #dde; padding: 3px 8px; text-align: left; }
th { background: #f3f4f8; } td.bad { color: #b00020; font-weight: 600; } td.good { color: #1b7f3b; }
table.grid td { text-align: center; white-space: nowrap; padding: 3px 5px; } table.grid th.rot { writing-mode: vertical-rl; transform: rotate(180deg); font-weight: 500; }
table.grid td.regressed { background: #b00020; } table.grid td.regressed a { color: #fff; font-weight: 700; }
table.grid td.rose { background: #fde3e3; } table.grid td.fell { background: #e3f4e8; } table.grid td.none { color: #aab; }
table.grid a { color: inherit; text-decoration: none; } .legend span { display: inline-block; padding: 1px 6px; margin-right: 6px; }
details.target { border: 1px solid #dde; border-radius: 4px; margin: 8px 0; padding: 4px 12px; }
details.target > summary { cursor: pointer; font-size: 14px; padding: 4px 0; } details.target[open] > summary { border-bottom: 1px solid #eef; margin-bottom: 6px; }
.flag { color: #b00020; font-weight: 600; } .calm { color: #1b7f3b; }
"""

# Marks each chart as rendered when the browser laid it out at a real size and drew into it.
# A chart in a collapsed target is measured with its section opened for that moment.
_SCRIPT = """
window.addEventListener('load', function () {
  var charts = document.querySelectorAll('figure.chart'), drawn = 0;
  charts.forEach(function (chart) {
    var closed = chart.closest('details:not([open])');
    if (closed) { closed.open = true; }
    var svg = chart.querySelector('svg'), box = svg ? svg.getBoundingClientRect() : null;
    var marks = svg ? svg.querySelectorAll('path, use').length : 0;
    var ok = !!box && box.width > 100 && box.height > 50 && marks > 10;
    if (closed) { closed.open = false; }
    chart.setAttribute('data-rendered', ok ? 'yes' : 'no');
    if (ok) { drawn += 1; }
  });
  document.body.setAttribute('data-charts', String(charts.length));
  document.body.setAttribute('data-charts-rendered', String(drawn));
});
"""


def anchor(*parts: str) -> str:
    """An element id from names (targets and categories are free text): letters, digits and '-'."""
    return "-".join(re.sub(r"[^A-Za-z0-9]+", "-", p).strip("-").lower() or "x" for p in parts)


def _chart(kind: str, title: str, svg: str, element_id: str | None = None) -> str:
    ident = f' id="{element_id}"' if element_id else ""
    return f'<figure class="chart" data-chart="{kind}"{ident}>{svg}<figcaption>{html.escape(title)}</figcaption></figure>'


def _empty(what: str) -> str:
    return f'<p class="empty">No {html.escape(what)} in this period.</p>'


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


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
            text = _text(value)
            cells.append(f'<td class="{css}">{html.escape(text)}</td>' if css else f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


FOLD_ROWS = 40  # a longer table starts collapsed, so the page does not end in a wall of rows


def _folded(table: str, rows: int, what: str) -> str:
    if rows <= FOLD_ROWS:
        return table
    return f'<details class="table"><summary class="meta">{rows} {html.escape(what)}: show the table</summary>{table}</details>'


def _outcome_mark(value: object) -> str:
    return {"regressed": "bad", "unhealthy": "bad", "passed": "good"}.get(str(value), "")


def _percent(value: float) -> str:
    return "–" if pd.isna(value) else f"{100 * value:.0f}%"


def _grid_table(cells: pd.DataFrame, min_effect: float) -> str:
    """Targets down, categories across; each cell the current rate over the baseline's."""
    categories = sorted(cells.category.unique())
    head = "<th>target</th>" + "".join(f'<th class="rot">{html.escape(c)}</th>' for c in categories)
    rows = []
    for target, row in cells.groupby("target", sort=True):
        by_category = {r.category: r for r in row.itertuples()}
        tds = [f'<th><a href="#{anchor("target", target)}">{html.escape(target)}</a></th>']
        for category in categories:
            cell = by_category.get(category)
            if cell is None or not cell.cur_n:
                tds.append('<td class="none">·</td>')
                continue
            tip = f"{category}: {cell.cur_k}/{cell.cur_n} in the latest runs against {cell.base_k}/{cell.base_n} before" + (
                f", p (corrected) = {cell.p_adjusted:.2g}" if cell.base_n else ""
            )
            css = "regressed" if cell.regressed else "rose" if cell.effect >= min_effect else "fell" if cell.effect <= -min_effect else ""
            link = anchor("asr", target, category) if cell.regressed else anchor("target", target)
            text = f"{_percent(cell.current)}<br><small>{_percent(cell.baseline)}</small>"
            tds.append(f'<td class="{css}" title="{html.escape(tip)}"><a href="#{link}">{text}</a></td>')
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _target_sections(history: History, cells: pd.DataFrame, drift: pd.DataFrame, settings: Settings) -> tuple[str, int]:
    """One collapsible section per target, open where something changed; returns (html, charts)."""
    # Each table's targets, once (a column of strings is slow to walk per target).
    frames = (history.asr, history.violations, history.drift, history.agreement)
    probed, streamed, checked, audited = (set(frame["target"].unique()) if not frame.empty else set() for frame in frames)
    targets = sorted(probed | streamed | checked | audited)
    regressed = cells[cells.regressed] if not cells.empty else cells
    alerted = set(history.open_alerts.target) if not history.open_alerts.empty else set()
    drifting = set(drift.loc[drift.drifting, "target"]) if not drift.empty else set()
    regressed_targets = set(regressed.target) if not regressed.empty else set()

    def changed(target: str) -> bool:
        return target in alerted or target in drifting or target in regressed_targets

    sections, charts = [], 0
    for target in sorted(targets, key=lambda t: (not changed(t), t)):
        parts, notes = [], []
        worse = sorted(regressed.loc[regressed.target == target, "category"]) if not regressed.empty else []
        if worse:
            notes.append(f'<span class="flag">{len(worse)} regressed: {html.escape(", ".join(worse))}</span>')
        if target in alerted:
            notes.append(f'<span class="flag">{(history.open_alerts.target == target).sum()} open alert(s)</span>')
        if target in drifting:
            notes.append('<span class="flag">drifting</span>')
        if target in probed:
            parts.append(_chart("asr", f"{target}: rates per category", figures.asr_heatmap(history.asr, history.deploys, target)))
            for category in worse:
                svg = figures.category_figure(history.asr, history.deploys, target, category)
                parts.append(_chart("asr", f"{target} / {category}", svg, anchor("asr", target, category)))
            if not history.first_failures.empty and (history.first_failures.target == target).any():
                svg = figures.first_failure_figure(history.first_failures, target)
                parts.append(_chart("turns", f"{target}: turn of first failure in scripted conversations", svg))
        if target in streamed:
            parts.append(_chart("violations", f"{target}: production violations", figures.violation_figure(history.violations, target)))
        if target in checked:
            svg = figures.drift_figure(history.drift, target, settings.drift_alpha, settings.drift_min_effect)
            parts.append(_chart("drift", f"{target}: embedding drift", svg))
        if target in audited:
            parts.append(_chart("agreement", f"{target}: head–judge agreement", figures.agreement_figure(history.agreement, target)))
        charts += len(parts)
        summary = f"<b>{html.escape(target)}</b> · " + (" · ".join(notes) if notes else '<span class="calm">nothing changed</span>')
        is_open = " open" if changed(target) else ""
        sections.append(f'<details class="target" id="{anchor("target", target)}"{is_open}><summary>{summary}</summary>{"".join(parts)}</details>')
    return "".join(sections), charts


def render_page(history: History, settings: Settings) -> tuple[str, int]:
    """The report's HTML: the summary first (what changed, open alerts, drift), then each target's
    charts; returns the page and how many charts it holds."""
    span = f"{history.since:%Y-%m-%d %H:%M} to {history.until:%Y-%m-%d %H:%M} UTC"
    cells = compare_grid(history.grid, alpha=settings.alert_alpha, min_effect=settings.alert_min_effect, correction=settings.alert_correction)
    drift = drift_status(history.drift_latest, alpha=settings.drift_alpha, min_effect=settings.drift_min_effect)
    targets, charts = _target_sections(history, cells, drift, settings)
    alerts_svg = figures.alerts_figure(history.alerts)
    charts += alerts_svg is not None
    n_regressed = int(cells.regressed.sum()) if not cells.empty else 0
    grid = (
        f"<p class=\"meta\">Each cell: the rate in the latest run of each of the target's suites (pooled), over the rate in the span's earlier runs. "
        f"Attack success for harmful probes, over-refusal for benign ones. Marked as a regression alert decides: one-sided exact test, "
        f"{html.escape(settings.alert_correction)} correction across the target's categories at α={settings.alert_alpha:g}, and a rise of at least "
        f"{settings.alert_min_effect:g}. Click a cell for its chart.</p>"
        f'<p class="legend meta"><span class="flag">{n_regressed} regressed</span><span style="background:#fde3e3">rose by the minimum or more, not significant</span>'
        f'<span style="background:#e3f4e8">fell by the minimum or more</span></p>' + _grid_table(cells, settings.alert_min_effect)
        if not cells.empty
        else _empty("probe runs")
    )
    open_alerts = history.open_alerts
    alerts_now = (
        _table(open_alerts[["created_at", "kind", "severity", "target", "suite", "categories", "status", "title"]])
        if not open_alerts.empty
        else '<p class="empty">No open alerts.</p>'
    )
    drift_table = (
        _table(
            drift.rename(columns={"drifted_methods": "drifted"}).assign(drifting=drift.drifting.map({True: "drifting", False: "stable"})),
            {"drifting": lambda v: "bad" if v == "drifting" else "good"},
        )
        if not drift.empty
        else _empty("drift checks")
    )
    alerts_table = history.alerts.sort_values("created_at", ascending=False).head(50) if not history.alerts.empty else history.alerts
    alerts_section = (
        _chart("alerts", "alerts by target and suite", alerts_svg)
        + _table(alerts_table[["created_at", "kind", "severity", "target", "suite", "model_version", "status", "title"]])
        if alerts_svg is not None
        else _empty("alerts")
    )
    no_stream = "" if not history.violations.empty else _empty("scored production samples")
    no_probes = "" if not history.asr.empty else _empty("probe runs")
    bucket = "one point per run" if history.bucket is None else f"one point per {_duration(history.bucket)}"
    body = f"""
<h1>safemon report</h1>
<p class="meta">Database <code>{html.escape(settings.clickhouse_database)}</code> · {html.escape(span)} · generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>
<nav><a href="#summary">What changed</a><a href="#open-alerts">Open alerts</a><a href="#drift">Drift</a><a href="#targets">Per target</a><a href="#alerts">Alerts</a><a href="#corrected">Corrected rates</a><a href="#runs">Latest runs</a></nav>
<h2 id="summary">What changed: latest runs against the span, per target and category</h2>
{grid}
<h3 id="open-alerts">Open alerts</h3>
{alerts_now}
<h3 id="drift">Drift, per target (latest check of each method)</h3>
{drift_table}
<h2 id="targets">Per target</h2>
<p class="meta">Probe rates per category ({bucket}), for scripted conversations the turn at which they first failed, the production samples flagged per hazard, drift checks (each method's median per bucket when the checks cover days), and, where a judge audits the heads, how often it agreed with them per day. Targets where something changed come first and are open.</p>
{no_probes}{no_stream}{targets}
<h2 id="alerts">Alerts</h2>
{alerts_section}
<h2 id="corrected">Rates measured and corrected for detector error</h2>
<p class="meta">Rogan-Gladen: each rate corrected with the scoring detectors' sensitivity and specificity from their model card; the interval carries the uncertainty of all three. Probe rates of the latest runs; stream rates of the span's last {_duration(min(history.until - history.since, CORRECTED_STREAM))}. Regression tests compare measured rates of one detector version.</p>
{_folded(_table(history.corrected), len(history.corrected), "rates") if not history.corrected.empty else _empty("rates of a detector version with a card")}
<h2 id="runs">Latest run per target and suite</h2>
{_folded(_table(history.latest_runs, {"outcome": _outcome_mark, "healthy": lambda v: "" if v else "bad"}), len(history.latest_runs), "runs")}
"""
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>safemon report: {html.escape(span)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}<script>{_SCRIPT}</script></body></html>\n"
    )
    return page, charts


def _duration(span: timedelta) -> str:
    if span % timedelta(days=7) == timedelta(0) and span >= timedelta(days=7):
        weeks = span // timedelta(days=7)
        return "week" if weeks == 1 else f"{weeks} weeks"
    if span % timedelta(days=1) == timedelta(0):
        return "day" if span.days == 1 else f"{span.days} days"
    hours = round(span / timedelta(hours=1))
    return "hour" if hours == 1 else f"{hours} hours"


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
    queried = time.perf_counter()
    step(STEPS[0])
    page, charts = render_page(history, settings)
    step(STEPS[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    step(STEPS[2])
    finished = time.perf_counter()
    summary = ReportSummary(out, charts, history.rows_read, finished - started, query_seconds=queried - started, draw_seconds=finished - queried)
    log.info(
        "report.written",
        path=str(out),
        charts=summary.charts,
        rows=summary.rows_read,
        seconds=round(summary.seconds, 2),
        query_seconds=round(summary.query_seconds, 2),
        draw_seconds=round(summary.draw_seconds, 2),
    )
    return summary
