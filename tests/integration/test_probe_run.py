"""Whole probe runs on the real engine: replay endpoint, failing targets, Slack stand-in."""

from __future__ import annotations

from importlib.resources import files

import pytest
from pydantic import SecretStr

from pipeline.probes.replay import ReplayServer
from pipeline.probes.runner import run_once
from pipeline.probes.suites import get_suite
from pipeline.probes.targets import TargetConfig
from pipeline.store.client import open_store
from tests.support.fake_endpoints import FakeEndpoint, closed_port_url
from tests.support.shipped import shipped_version
from tests.support.slack_server import SlackServer

RECORDING = files("pipeline.demo") / "recording.jsonl"


@pytest.fixture(scope="module")
def replay():
    with ReplayServer(RECORDING) as server:
        yield server.url


@pytest.fixture
def slack_settings(settings):
    with SlackServer(token="xoxb-test") as slack:
        yield (
            slack,
            settings.model_copy(
                update={"slack_bot_token": SecretStr("xoxb-test"), "slack_channel": "#alerts", "slack_api_url": slack.api_url, "target_max_retries": 1}
            ),
        )


def _target(url: str, version: str, model: str | None = None) -> TargetConfig:
    return TargetConfig(name="bot", endpoint=url, model_version=version, model=model or version, suites=["demo"], max_retries=1, timeout_s=2)


def _rows(settings, sql: str) -> list[tuple]:
    with open_store(settings) as client:
        return client.query(sql).result_rows


def test_regression_is_alerted_suppressed_then_recovered_in_thread(replay, slack_settings) -> None:
    slack, settings = slack_settings
    suite = get_suite("demo")
    assert run_once(_target(replay, "v1"), suite, settings, "run-1").run.outcome == "passed"
    second = run_once(_target(replay, "v2"), suite, settings, "run-2")
    assert second.run.outcome == "regressed"
    # The recording's v2 gives in on cybercrime and weapons probes and nowhere else; the shipped
    # refusal head misses two of v1's cybercrime refusals, so weapons is the category sure to regress.
    regressed = {c.category for c in second.evaluation.comparisons if c.regressed}
    assert "indiscriminate_weapons" in regressed and regressed <= {"cybercrime", "indiscriminate_weapons"}
    assert len(slack.messages) == 1
    root_ts = slack.messages[0]["ts"] if "ts" in slack.messages[0] else None

    # The same regression again, within the cooldown: stored, not re-posted; still compared with v1.
    third = run_once(_target(replay, "v2"), suite, settings, "run-3")
    assert third.run.outcome == "regressed" and third.run.baseline_run_id == "run-1"
    assert third.evaluation.alert.status == "suppressed"
    assert len(slack.messages) == 1

    # A fixed model (answers like v1) closes the chain with a reply in the alert's thread.
    fourth = run_once(_target(replay, "v3", model="v1"), suite, settings, "run-4")
    assert fourth.run.outcome == "passed" and fourth.evaluation.alert.alert.kind == "recovery"
    assert len(slack.messages) == 2
    sent = _rows(settings, "SELECT kind, status, slack_ts, thread_ts FROM alerts FINAL ORDER BY created_at")
    assert [(k, s) for k, s, _, _ in sent] == [("regression", "sent"), ("regression", "suppressed"), ("recovery", "sent")]
    assert slack.messages[1]["thread_ts"] == sent[0][2]
    assert root_ts is None or root_ts == sent[0][2]
    # Every scored result records which detectors scored it (the shipped heads: no head is
    # configured); errors were not scored. Their card's error counts are stored beside them.
    versions = _rows(settings, "SELECT DISTINCT detector_version FROM probe_results FINAL WHERE verdict != 'error'")
    assert versions == [(shipped_version(settings.embedding_backend),)]
    errors = _rows(settings, "SELECT detector_version, task, tp + fn + tn + fp > 0 FROM detector_errors FINAL ORDER BY task")
    assert errors == [(versions[0][0], "harmful_compliance", True), (versions[0][0], "refusal", True)]


def test_retried_run_adds_no_rows_and_no_second_alert(replay, slack_settings) -> None:
    slack, settings = slack_settings
    suite = get_suite("demo")
    run_once(_target(replay, "v1"), suite, settings, "base")
    for _ in range(2):  # the same run_id twice, as a retried Airflow run would
        run_once(_target(replay, "v2"), suite, settings, "same-run")
    assert _rows(settings, "SELECT count(), uniqExact(run_id, probe_id) FROM probe_results") == [(128, 128)]
    assert _rows(settings, "SELECT count() FROM alerts FINAL") == [(1,)]
    assert len(slack.messages) == 1


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("down", "cannot connect"),
        (FakeEndpoint(mode="status", status=500), "HTTP 500"),
        (FakeEndpoint(mode="invalid_json"), "invalid JSON"),
        (FakeEndpoint(mode="hang"), "timeout"),
    ],
    ids=["down", "http-500", "invalid-json", "timeout"],
)
def test_failing_target_gives_errors_and_a_data_quality_alert_not_a_verdict(settings, endpoint, reason) -> None:
    suite = get_suite("demo")
    settings = settings.model_copy(update={"target_max_retries": 1})
    if endpoint == "down":
        outcome = run_once(_target(closed_port_url(), "v1"), suite, settings, "r")
    else:
        with endpoint:
            target = _target(endpoint.url, "v1").model_copy(update={"timeout_s": 0.3})
            outcome = run_once(target, suite, settings, "r")
    verdicts = {r.verdict for r in outcome.results}
    assert verdicts == {"error"}, verdicts  # never scored as refused or safe
    assert all(reason in r.error for r in outcome.results)
    assert outcome.run.outcome == "unhealthy" and not outcome.run.healthy
    assert outcome.evaluation.alert.alert.kind == "data_quality"
    assert outcome.evaluation.comparisons == ()
    assert _rows(settings, "SELECT outcome FROM probe_runs FINAL") == [("unhealthy",)]


def test_slack_down_keeps_the_alert_and_a_later_delivery_sends_it(replay, slack_settings) -> None:
    from pipeline.alerts.dispatch import deliver_pending

    slack, settings = slack_settings
    suite = get_suite("demo")
    run_once(_target(replay, "v1"), suite, settings, "a")
    slack.go_down("503")
    outcome = run_once(_target(replay, "v2"), suite, settings, "b")
    assert outcome.delivery.failed == 1 and slack.messages == []
    assert _rows(settings, "SELECT status, attempts, last_error != '' FROM alerts FINAL") == [("pending", 1, True)]
    slack.come_up()
    with open_store(settings) as client:
        report = deliver_pending(client, settings)
    assert report.sent == 1 and len(slack.messages) == 1
    assert _rows(settings, "SELECT status, attempts FROM alerts FINAL") == [("sent", 2)]
