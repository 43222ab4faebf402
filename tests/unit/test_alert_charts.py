"""Trend charts on Slack alerts: drawn from the store's history, uploaded into the thread."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest
from matplotlib.image import imread
from pydantic import SecretStr

from pipeline.alerts.charts import DPI, SIZE_IN, TrendPoint, render_trend
from pipeline.alerts.dispatch import deliver_pending, load_trend
from pipeline.records import Alert, ProbeResult, ProbeRun, Source, Verdict, utc_now
from pipeline.store import alerts as alert_store
from pipeline.store.alerts import StoredAlert
from pipeline.store.probes import write_results, write_run
from tests.support.alerts import make_alert
from tests.support.probe_results import probe_result
from tests.support.sample_rows import insert_scores
from tests.support.slack_server import CHANNEL_ID, SlackServer

TOKEN = "xoxb-chart-test"
LINK = "http://airflow.local/dags/probe_prod_core/runs/r4"
PNG = b"\x89PNG\r\n\x1a\n"
# (model_version, cybercrime successes of 20, hate successes of 20) per run, oldest first.
RUNS = [("v1", 1, 1), ("v1", 2, 1), ("v2", 12, 1), ("v2", 14, 2)]


def _result(run_id: str, i: int, category: str, success: bool) -> ProbeResult:
    return probe_result(run_id, f"{category}-{i:02d}", category, Verdict.ATTACK_SUCCESS if success else Verdict.REFUSED, violation=0.9 if success else 0.0)


def _fill_runs(client) -> list[ProbeRun]:
    start = utc_now() - timedelta(days=4)
    runs = []
    for number, (version, cyber, hate) in enumerate(RUNS, start=1):
        at = start + timedelta(days=number - 1)
        run = ProbeRun(f"r{number}", "prod", "core", "1", version, at, at + timedelta(minutes=5), 40, 0, status="evaluated", outcome="passed")
        write_run(client, run)
        results = [_result(run.run_id, i, "cybercrime", i < cyber) for i in range(20)]
        results += [_result(run.run_id, i, "hate", i < hate) for i in range(20)]
        write_results(client, run, results)
        runs.append(run)
    return runs


def _alert(runs: list[ProbeRun], **changes) -> Alert:
    return make_alert(**{"alert_id": "a-chart", "run_id": runs[-1].run_id, "link": LINK, **changes})


def _png_pixels(data: bytes) -> np.ndarray:
    return imread(io.BytesIO(data), format="png")


def test_trend_chart_is_a_small_non_blank_png() -> None:
    now = utc_now()
    points = [
        TrendPoint("cybercrime", now + timedelta(hours=h), r, max(0, r - 0.1), min(1, r + 0.1), 40, v)
        for h, (r, v) in enumerate([(0.05, "v1"), (0.1, "v1"), (0.6, "v2"), (0.7, "v2")])
    ]
    data = render_trend(points, title="prod / core: cybercrime", metric="ASR")
    assert data.startswith(PNG) and len(data) < 200_000
    pixels = _png_pixels(data)
    assert pixels.shape[:2] == (round(SIZE_IN[1] * DPI), round(SIZE_IN[0] * DPI))
    assert float((pixels[..., :3].mean(axis=2) < 0.9).mean()) > 0.02
    with pytest.raises(ValueError, match="no points"):
        render_trend([], title="nothing")


def test_probe_trend_holds_each_run_s_rate_with_its_interval(client) -> None:
    runs = _fill_runs(client)
    points = load_trend(client, _alert(runs))
    assert [p.category for p in points] == ["cybercrime"] * len(RUNS)
    assert [p.n for p in points] == [20] * len(RUNS)
    assert [round(p.rate, 3) for p in points] == [cyber / 20 for _, cyber, _ in RUNS]
    assert [p.model_version for p in points] == [version for version, _, _ in RUNS]
    assert all(p.ci_low <= p.rate <= p.ci_high for p in points)
    # Only runs up to the alert: an alert about run 2 does not see runs 3 and 4.
    early = load_trend(client, _alert(runs, run_id="r2", created_at=runs[1].started_at + timedelta(minutes=1)))
    assert len(early) == 2
    assert load_trend(client, _alert(runs, categories=())) == []


def test_stream_trend_is_hourly_from_the_violation_view(client) -> None:
    start = utc_now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    insert_scores(client, "prod", start, 179, 600, {"cybercrime": 0.2}, seed=3)
    alert = make_alert(alert_id="a-s", source=Source.STREAM, suite="", model_version="v1", run_id="window")
    points = load_trend(client, alert)
    assert len(points) == 3 and sum(p.n for p in points) == 600
    flagged = client.query("SELECT countIf(has(flagged_categories, 'cybercrime')) FROM sample_scores").result_rows[0][0]
    assert sum(round(p.rate * p.n) for p in points) == flagged


def test_bot_delivery_uploads_the_chart_into_the_alert_s_thread(client, settings) -> None:
    runs = _fill_runs(client)
    alert_store.save(client, StoredAlert(_alert(runs), "pending"))
    with SlackServer(token=TOKEN) as slack:
        bot = settings.model_copy(update={"slack_bot_token": SecretStr(TOKEN), "slack_channel": "#alerts", "slack_api_url": slack.api_url})
        report = deliver_pending(client, bot)
        assert report.sent == 1
        (message,) = slack.messages
        (upload,) = slack.completed_uploads
        ts = slack.requests_to("/api/chat.postMessage")[0]
    stored = alert_store.get(client, "a-chart")
    assert stored.status == "sent" and upload["thread_ts"] == stored.slack_ts
    assert upload["channel_id"] == CHANNEL_ID
    (file_id,) = [f["id"] for f in _files(upload)]
    chart = slack.uploads[file_id]
    assert chart.startswith(PNG) and _png_pixels(chart).shape[0] > 100
    # The message links to the Airflow run.
    buttons = [e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["url"] for b in buttons] == [LINK] and LINK in message["text"]
    assert ts.status == 200


def _files(upload: dict) -> list[dict]:
    import json

    files = upload["files"]
    return json.loads(files) if isinstance(files, str) else files


def test_webhook_delivery_has_the_link_but_no_picture(client, settings) -> None:
    runs = _fill_runs(client)
    alert_store.save(client, StoredAlert(_alert(runs), "pending"))
    with SlackServer(token=TOKEN) as slack:
        hook = settings.model_copy(update={"slack_webhook_url": SecretStr(slack.webhook_url)})
        assert deliver_pending(client, hook).sent == 1
        assert slack.completed_uploads == [] and slack.requests_to("/api/files.getUploadURLExternal") == []
        (message,) = slack.webhook_messages
    assert LINK in str(message["blocks"])


def test_a_chart_that_cannot_be_uploaded_does_not_hold_up_the_alert(client, settings) -> None:
    from pipeline.alerts.slack import SlackSink

    runs = _fill_runs(client)
    with SlackServer(token=TOKEN) as slack:
        bot = settings.model_copy(update={"slack_bot_token": SecretStr(TOKEN), "slack_channel": "#alerts", "slack_api_url": slack.api_url})
        sink = SlackSink(bot)
        delivery = sink.post(_alert(runs))
        # Slack goes down between the message and the upload: the message is out, the chart is dropped.
        slack.go_down("503")
        assert sink._upload_chart(_alert(runs), PNG + b"rest", delivery.channel, delivery.ts) is None
        assert len(slack.messages) == 1 and slack.completed_uploads == []
