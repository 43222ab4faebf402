"""`safemon report` from a store filled by the demo, loaded in a real headless Chromium."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from pipeline.lab.browser import find_chromium, render_page
from pipeline.logs import configure_logging
from pipeline.report.page import parse_span, write_report
from pipeline.settings import get_settings
from pipeline.store.client import open_store
from pipeline.store.history import load_history
from tests.support.env import ROOT, require

ARTIFACTS = ROOT / "tests" / "artifacts"
SCREENSHOT = ARTIFACTS / "report.png"
WIDTH, HEIGHT = 1280, 2600
runner = CliRunner()


@pytest.fixture(scope="module")
def report_file(filled, tmp_path_factory):
    from pipeline.cli import app

    out = tmp_path_factory.mktemp("report") / "report.html"
    env = {"SAFEMON_CLICKHOUSE_DSN": filled.clickhouse_dsn, "SAFEMON_CLICKHOUSE_DATABASE": filled.clickhouse_database}
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["report", "--since", "30d", "--out", str(out)], env=env)
    finally:
        get_settings.cache_clear()
        configure_logging()  # the CLI bound its logs to the runner's stream, which is closed now
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output.replace("\n", "")
    return out


def test_report_renders_every_chart_in_chromium_with_a_non_blank_screenshot(report_file) -> None:
    require(find_chromium() is not None, "Chromium is not installed (deploy/chromium.sh installs it)")
    page = render_page(report_file, SCREENSHOT, width=WIDTH, height=HEIGHT)
    body = re.search(r"<body[^>]*>", page.dom).group(0)
    total = int(re.search(r'data-charts="(\d+)"', body).group(1))
    rendered = int(re.search(r'data-charts-rendered="(\d+)"', body).group(1))
    assert total >= 4 and rendered == total, body
    for kind in ("asr", "violations", "drift", "alerts"):
        assert re.search(rf'data-chart="{kind}"[^>]*data-rendered="yes"', page.dom), f"{kind} chart not rendered"
    image = imread(page.screenshot)
    assert image.shape[:2] == (HEIGHT, WIDTH)
    grey = image[..., :3].mean(axis=2)
    inked = float((grey < 0.9).mean())
    # Charts, bands and tables cover a real part of the page; a blank or error page does not.
    assert inked > 0.03 and float(grey.std()) > 0.08, (inked, float(grey.std()))
    assert len(np.unique((image[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50  # colours, not just text


def test_report_is_self_contained(report_file) -> None:
    html = report_file.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)
    assert "<link" not in html and "@import" not in html and "url(http" not in html
    assert html.count('<figure class="chart"') >= 4
    assert 'data-chart="turns"' in html, "the conversations' turn of first failure is drawn"


def test_report_history_marks_the_model_version_change_and_the_alert(filled) -> None:
    now = datetime.now(UTC)
    with open_store(filled, readonly=True) as client:
        history = load_history(client, timedelta(days=30), now)
        runs = client.query("SELECT model_version, started_at FROM probe_runs FINAL ORDER BY started_at").result_rows
    # The demo runs two suites (single prompts, then conversations) against v1, then v2.
    assert [tuple(r) for r in history.deploys[["suite", "model_version"]].itertuples(index=False)] == [("demo", "v2"), ("multi_turn", "v2")]
    assert history.deploys["at"].iloc[0].to_pydatetime().replace(tzinfo=None) == runs[2][1].replace(tzinfo=None)
    assert history.asr.run_id.nunique() == 4 and history.latest_runs.run_id.iloc[-1] == history.asr.sort_values("at").run_id.iloc[-1]
    # The conversations' first failures: v1 held every one; v2 lost some, each at a turn.
    turns = history.first_failures
    assert set(turns.model_version) == {"v1", "v2"} and (turns[turns.model_version == "v1"].turn == 0).all()
    assert (turns[(turns.model_version == "v2") & (turns.turn > 0)].n.sum()) > 0
    assert (history.asr.ci_low <= history.asr.rate + 1e-12).all() and (history.asr.rate <= history.asr.ci_high + 1e-12).all()
    assert list(history.alerts.kind) == ["regression"]
    assert set(history.drift.method) == {"mmd", "c2st"}
    # The hourly stream rates add up to the rows stored.
    with open_store(filled, readonly=True) as client:
        total = client.query("SELECT count() FROM sample_scores FINAL").result_rows[0][0]
    per_category = history.violations.groupby("category")["n"].sum()
    assert (per_category == total).all()


def test_the_summary_leads_and_marks_the_alerted_categories_with_links_to_their_charts(report_file, filled) -> None:
    html = report_file.read_text()
    with open_store(filled, readonly=True) as client:
        alerted = {c for (cats,) in client.query("SELECT categories FROM alerts FINAL WHERE kind = 'regression'").result_rows for c in cats}
        title = client.query("SELECT title FROM alerts FINAL WHERE kind = 'regression'").result_rows[0][0]
    assert alerted
    # What changed, the open alerts and drift come before any chart.
    first_chart = html.index("<figure")
    for section in ('id="summary"', 'id="open-alerts"', 'id="drift"'):
        assert html.index(section) < first_chart, section
    # The grid marks as regressed what the regression alert found (same test; the grid pools the
    # target's suites, so it can also mark a category that no one suite had enough data to alert on),
    # and each marked cell links to a chart of that category on the page.
    marked = re.findall(r'<td class="regressed"[^>]*><a href="#([^"]+)">', html)
    assert alerted <= {m.removeprefix("asr-demo-assistant-").replace("-", "_") for m in marked}
    for link in marked:
        assert f'id="{link}"' in html and re.search(rf'<figure class="chart" data-chart="asr" id="{link}">', html)
    open_alerts = html[html.index('id="open-alerts"') : html.index('id="drift"')]
    assert title.replace("'", "&#x27;") in open_alerts or title in open_alerts
    # Targets where something changed are open; the rest are collapsed.
    assert re.search(r'<details class="target" id="target-demo-assistant" open>', html)
    assert re.search(r'<details class="target" id="target-prod-chat">', html)


def test_report_on_an_empty_store_says_so(settings, client, tmp_path) -> None:
    summary = write_report(settings, timedelta(days=1), tmp_path / "empty.html")
    html = summary.path.read_text()
    assert summary.charts == 0
    for what in ("probe runs", "scored production samples", "drift checks", "alerts"):
        assert f"No {what} in this period." in html


@pytest.mark.parametrize(
    ("text", "expected"), [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("90m", timedelta(minutes=90)), ("2w", timedelta(weeks=2))]
)
def test_parse_span(text, expected) -> None:
    assert parse_span(text) == expected


@pytest.mark.parametrize("text", ["", "30", "0d", "-1d", "1y", "d30"])
def test_parse_span_refuses_nonsense(text) -> None:
    with pytest.raises(ValueError, match="span"):
        parse_span(text)
