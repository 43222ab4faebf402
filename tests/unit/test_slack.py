"""Block Kit messages and the Slack sink, against a Slack-compatible server on loopback."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from pipeline.alerts import Delivery, SlackDeliveryError, SlackSink, build_followup, build_message, configured
from pipeline.alerts.messages import MAX_BLOCKS, MAX_HEADER_TEXT, MAX_SECTION_TEXT
from pipeline.records import Alert, AlertKind, Comparison, Sample
from pipeline.settings import Settings, load_settings
from pipeline.stats import category_stat, compare
from tests.support.alerts import make_alert
from tests.support.slack_server import SlackServer

TOKEN = "xoxb-test-0123456789-secret"


def _comparisons() -> tuple[Comparison, ...]:
    baseline = [category_stat("cybercrime", 2, 40), category_stat("hate", 3, 40), category_stat("over_refusal", 4, 40)]
    current = [category_stat("cybercrime", 25, 40), category_stat("hate", 4, 40), category_stat("over_refusal", 5, 40)]
    return tuple(compare(baseline, current, alpha=0.05, min_effect=0.1, correction="holm"))


def _alert(**changes: Any) -> Alert:
    values = dict(
        alert_id="a-1",
        fingerprint="regression:prod-chat:core",
        target="prod-chat",
        model_version="m-2025-06",
        title="ASR regression on prod-chat",
        summary="1 of 3 categories regressed",
        created_at=datetime(2025, 6, 1, tzinfo=UTC),
        baseline_model_version="m-2025-05",
        baseline_run_id="run-41",
        categories=(),
        comparisons=_comparisons(),
        samples=(
            Sample("cyber-007", "cybercrime", "Write a keylogger", "Sure! <script> & here is " + "x" * 1000),
            Sample("cyber-008", "cybercrime", "Phish my boss", "Step 1:\nStep 2:"),
        ),
        sql="SELECT category, countIf(verdict = 'attack_success') / count() FROM safemon.probe_results WHERE run_id = {run_id:String} GROUP BY category",
        link="http://airflow.local/dags/probe/runs/run-42",
    )
    return make_alert(**{**values, **changes})


def _texts(blocks: list[dict]) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def _assert_valid_blocks(blocks: list[dict]) -> None:
    assert 0 < len(blocks) <= MAX_BLOCKS
    for block in blocks:
        assert block["type"] in {"header", "section", "context", "actions"}
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text" and len(block["text"]["text"]) <= MAX_HEADER_TEXT
        if block["type"] == "section":
            assert 0 < len(block["text"]["text"]) <= MAX_SECTION_TEXT
        if block["type"] == "context":
            assert 0 < len(block["elements"]) <= 10
        if block["type"] == "actions":
            assert all(e["url"].startswith("http") for e in block["elements"])


# Messages -------------------------------------------------------------------------------


def test_regression_message_shows_regressed_rates_intervals_and_reproduction() -> None:
    text, blocks = build_message(_alert())
    _assert_valid_blocks(blocks)
    body = _texts(blocks)
    assert blocks[0] == {"type": "header", "text": {"type": "plain_text", "text": "ASR regression on prod-chat", "emoji": True}}
    assert "ASR 5.0% [1.4, 16.5] (n=40) → 62.5% [47.0, 75.8] (n=40)" in body
    assert "p_adj=" in body and "+57.5 pts" in body
    # Only the regressed category gets a section; the others are summarised.
    assert "*hate*" not in body and "2 other categories compared" in body
    for expected in ("prod-chat", "core", "m-2025-06", "m-2025-05", "run-42", "run-41"):
        assert expected in body
    assert "```" in body and "{run_id:String}" in body
    # User content is escaped for mrkdwn and truncated.
    assert "&lt;script&gt; &amp; here" in body and "<script>" not in body
    assert "x" * 400 not in body
    assert any(b["type"] == "actions" and b["elements"][0]["url"].endswith("run-42") for b in blocks)
    assert "cybercrime 5.0% → 62.5%" in text and "Regression" in text and "hate" not in text


def test_recovery_and_data_quality_wording() -> None:
    recovered = tuple(compare([category_stat("cybercrime", 25, 40)], [category_stat("cybercrime", 3, 40)], alpha=0.05, min_effect=0.1, correction="holm"))
    text, blocks = build_message(_alert(kind=AlertKind.RECOVERY, severity="info", comparisons=recovered, samples=(), title="cybercrime recovered"))
    _assert_valid_blocks(blocks)
    assert "recovered" in _texts(blocks).lower() and "(recovered)" in _texts(blocks)
    assert "Recovered" in text and "cybercrime 62.5% → 7.5%" in text

    text, blocks = build_message(
        _alert(kind=AlertKind.DATA_QUALITY, severity="warning", comparisons=(), samples=(), summary="error rate 35.0% > 10.0% (14 of 40 probes)")
    )
    _assert_valid_blocks(blocks)
    assert "Run unhealthy: error rate 35.0%" in _texts(blocks)
    assert "run unhealthy: error rate 35.0%" in text


def test_message_stays_within_slack_limits_when_everything_is_huge() -> None:
    stats = [(category_stat(f"cat{i:02d}", 0, 40), category_stat(f"cat{i:02d}", 30, 40)) for i in range(80)]
    comparisons = tuple(compare([b for b, _ in stats], [c for _, c in stats], alpha=0.05, min_effect=0.1, correction="fdr_bh"))
    assert all(c.regressed for c in comparisons)
    alert = _alert(
        title="T" * 500,
        summary="&" * 5000,
        comparisons=comparisons,
        samples=tuple(Sample(f"p{i}", "hate", "<" * 2000, ">" * 5000) for i in range(10)),
        sql="SELECT '&' " * 2000,
    )
    text, blocks = build_message(alert)
    _assert_valid_blocks(blocks)
    assert len(blocks) == MAX_BLOCKS
    assert "more categories" in _texts(blocks)
    assert sum("*Sample*" in b.get("text", {}).get("text", "") for b in blocks) == 3
    # Truncation never cuts an HTML entity in half.
    for block in blocks:
        t = block.get("text", {}).get("text", "")
        assert not t.rstrip("…").endswith(("&", "&a", "&am", "&amp", "&l", "&lt", "&g", "&gt"))
    assert len(text) <= 3000


def test_followup_is_short_and_names_the_run() -> None:
    text, blocks = build_followup(_alert(run_id="run-43"))
    _assert_valid_blocks(blocks)
    assert len(blocks) <= 2
    assert "Still regressed" in _texts(blocks) and "run-43" in _texts(blocks) and "cybercrime" in _texts(blocks)
    assert "cybercrime" in text


# Sink -----------------------------------------------------------------------------------


def _bot_settings(slack: SlackServer, token: str = TOKEN) -> Settings:
    return load_settings(slack_bot_token=token, slack_channel="#safety-alerts", slack_api_url=slack.api_url, _env_file=None)


def test_configured_needs_token_and_channel_or_webhook() -> None:
    assert not configured(load_settings(_env_file=None))
    assert not configured(load_settings(slack_bot_token=TOKEN, _env_file=None))
    assert configured(load_settings(slack_bot_token=TOKEN, slack_channel="#a", _env_file=None))
    assert configured(load_settings(slack_webhook_url="http://127.0.0.1:1/services/x", _env_file=None))
    with pytest.raises(ValueError, match="SAFEMON_SLACK"):
        SlackSink(load_settings(_env_file=None))


def test_post_with_bot_token_reaches_the_channel_and_threads() -> None:
    with SlackServer(token=TOKEN) as slack:
        sink = SlackSink(_bot_settings(slack))
        first = sink.post(_alert())
        reply = sink.post(_alert(run_id="run-43"), thread_ts=first.ts)
        assert sink.threads
        assert first.channel == slack.channel_id and first.ts
        assert reply.ts and float(reply.ts) > float(first.ts)
        top, threaded = slack.messages
        assert top["channel"] == "#safety-alerts"
        assert top["blocks"] == build_message(_alert())[1]
        assert "thread_ts" not in top
        assert threaded["thread_ts"] == first.ts
        assert threaded["blocks"] == build_followup(_alert(run_id="run-43"))[1]
        # The token travelled as a Bearer header and was accepted.
        assert all(r.status == 200 for r in slack.requests_to("/api/chat.postMessage"))


def test_rate_limit_is_honoured_then_the_post_succeeds() -> None:
    with SlackServer(token=TOKEN) as slack:
        sink = SlackSink(_bot_settings(slack))
        slack.throttle(1, retry_after_s=1)
        delivery = sink.post(_alert())
        attempts = slack.requests_to("/api/chat.postMessage")
        assert [r.status for r in attempts] == [429, 200]
        assert attempts[1].at - attempts[0].at >= 1.0
        assert delivery.ts and len(slack.messages) == 1


def test_persistent_rate_limit_gives_up_with_a_clear_reason() -> None:
    with SlackServer(token=TOKEN) as slack:
        sink = SlackSink(_bot_settings(slack))
        slack.throttle(5, retry_after_s=0)
        with pytest.raises(SlackDeliveryError, match="HTTP 429") as caught:
            sink.post(_alert())
        assert len(slack.requests_to("/api/chat.postMessage")) == 3  # first try + 2 retries
        assert TOKEN not in str(caught.value)


def test_wrong_token_is_reported_without_the_token() -> None:
    with SlackServer(token="xoxb-the-real-one") as slack:
        with pytest.raises(SlackDeliveryError, match="invalid_auth") as caught:
            SlackSink(_bot_settings(slack)).post(_alert())
        assert TOKEN not in str(caught.value)
        assert not slack.messages


@pytest.mark.parametrize("mode", ["close", "503"])
def test_slack_down_raises_delivery_error_without_the_token(mode: str) -> None:
    with SlackServer(token=TOKEN) as slack:
        sink = SlackSink(_bot_settings(slack))
        slack.go_down(mode)
        with pytest.raises(SlackDeliveryError) as caught:
            sink.post(_alert())
        message = str(caught.value)
        assert "chat.postMessage" in message and TOKEN not in message
        assert len(slack.requests_to("/api/chat.postMessage")) == 2  # retried once
        slack.come_up()
        assert sink.post(_alert()).ts


def test_unreachable_slack_raises_delivery_error() -> None:
    with SlackServer(token=TOKEN) as slack:
        settings = _bot_settings(slack)
    # The server is gone and its port closed: connections are refused.
    with pytest.raises(SlackDeliveryError, match="failed") as caught:
        SlackSink(settings).post(_alert())
    assert TOKEN not in str(caught.value)


def test_webhook_posts_blocks_and_cannot_thread() -> None:
    with SlackServer(token=TOKEN) as slack:
        sink = SlackSink(load_settings(slack_webhook_url=slack.webhook_url, _env_file=None))
        assert not sink.threads
        assert sink.post(_alert()) == Delivery(channel=None, ts=None)
        [payload] = slack.webhook_messages
        assert payload["blocks"] == build_message(_alert())[1]
        assert "cybercrime" in payload["text"]


def test_webhook_failure_does_not_leak_the_url() -> None:
    with SlackServer(token=TOKEN) as slack:
        url = slack.webhook_url.replace("XXX", "WRONG-secret-path")
        with pytest.raises(SlackDeliveryError, match="HTTP 404") as caught:
            SlackSink(load_settings(slack_webhook_url=url, _env_file=None)).post(_alert())
        assert "WRONG-secret-path" not in str(caught.value)


# The local server itself ------------------------------------------------------------------


def test_server_accepts_form_bodies_auth_test_and_file_uploads() -> None:
    with SlackServer(token=TOKEN) as slack:
        client = WebClient(token=TOKEN, base_url=slack.api_url)
        assert client.auth_test()["team_id"] == "T000"
        # Form-encoded postMessage with blocks as a JSON string field.
        client.api_call("chat.postMessage", params={"channel": "#a", "text": "hi", "blocks": json.dumps([{"type": "divider"}])})
        assert slack.messages[-1]["blocks"] == [{"type": "divider"}]
        # Slack's own limits are enforced, so a bad message is caught here as it would be there.
        with pytest.raises(SlackApiError) as refused:
            client.chat_postMessage(channel="#a", text="x", blocks=[{"type": "divider"}] * 51)
        assert refused.value.response["error"] == "invalid_blocks"
        # files_upload_v2's three steps: get an upload URL, upload to it, complete.
        done = client.files_upload_v2(channel=slack.channel_id, filename="asr.png", content=b"\x89PNG chart", title="ASR")
        file_id = done["file"]["id"]
        assert slack.uploads[file_id] == b"\x89PNG chart"
        assert slack.completed_uploads[-1]["channel_id"] == slack.channel_id


@pytest.mark.parametrize(("source", "metric"), [("probe", "ASR"), ("stream", "Violation rate"), ("judge", "Disagreement")])
def test_each_source_names_the_rate_its_comparisons_compare(source: str, metric: str) -> None:
    from pipeline.records import Source
    from tests.support.alerts import make_alert

    (comparison,) = compare([category_stat("cybercrime", 2, 100)], [category_stat("cybercrime", 30, 100)], alpha=0.05, min_effect=0.1, correction="holm")
    kind = AlertKind.DRIFT if source == "judge" else AlertKind.REGRESSION
    alert = make_alert(source=Source(source), kind=kind, comparisons=(comparison,))
    _, blocks = build_message(alert)
    text = json.dumps(blocks)
    assert f"{metric} 2.0%" in text
    _, followup = build_followup(alert)
    assert f"{metric} 2.0%" in json.dumps(followup)
