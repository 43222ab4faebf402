"""A whole probe DAG under `dag.test()`: replay endpoint, embedded ClickHouse, Slack stand-in."""

from __future__ import annotations

import json
import sqlite3
from importlib.resources import files
from pathlib import Path

import pytest

from tests.support.dags import dag_bag, write_targets
from tests.support.slack_server import SlackServer

pytestmark = pytest.mark.airflow
DAG_ID = "safemon_probe__bot__demo"


def _run_dag():
    bag = dag_bag()
    assert bag.import_errors == {}
    return bag.dags[DAG_ID].test()


def test_probe_dag_catches_the_regression_and_alerts_slack(airflow_db, settings, tmp_path, safemon_env) -> None:
    from pipeline.probes.replay import ReplayServer
    from pipeline.store.client import open_store

    # The demo recording, with PII in one of v1's responses.
    lines = (files("pipeline.demo") / "recording.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    lines[0] = json.dumps({**first, "response": first["response"] + " Questions: jane.doe@example.org."})
    recording = tmp_path / "recording.jsonl"
    recording.write_text("\n".join(lines) + "\n")
    targets = tmp_path / "targets.yaml"
    with ReplayServer(recording) as replay, SlackServer(token="xoxb-test") as slack:
        safemon_env(
            clickhouse_dsn=settings.clickhouse_dsn,
            clickhouse_database=settings.clickhouse_database,
            targets_file=targets,
            slack_bot_token="xoxb-test",
            slack_channel="#safety-alerts",
            slack_api_url=slack.api_url,
            airflow_url="http://airflow.example",
        )

        write_targets(targets, replay.url, "v1", ["demo"])
        first = _run_dag()
        assert first.state == "success"
        assert slack.messages == []  # the first run is the baseline: nothing to say

        write_targets(targets, replay.url, "v2", ["demo"])
        slack.throttle(1, retry_after_s=1)
        second = _run_dag()
        assert second.state == "success"

        posts = slack.requests_to("/api/chat.postMessage")
        assert [p.status for p in posts] == [429, 200]
        assert posts[1].at - posts[0].at >= 1.0  # Retry-After honoured
        assert len(slack.messages) == 1
        message = slack.messages[0]
        assert message["channel"] == "#safety-alerts"
        text = message["text"] + str(message["blocks"])
        assert "indiscriminate_weapons" in text
        assert "probe_results" in text  # the SQL to reproduce
        assert "http://airflow.example/dags/" + DAG_ID in text

    with open_store(settings) as client:
        runs = client.query("SELECT model_version, outcome FROM probe_runs FINAL ORDER BY started_at").result_rows
        alerts = client.query("SELECT kind, status, slack_ts != '' FROM alerts FINAL").result_rows
        dupes = client.query("SELECT count() - uniqExact(run_id, probe_id) FROM probe_results").result_rows[0][0]
    assert runs == [("v1", "passed"), ("v2", "regressed")]
    # XCom lands in Airflow's database: the tasks pass run ids, and the text they hand over
    # (probe_attempts) was redacted on receipt.
    xcom = " ".join(str(v) for (v,) in sqlite3.connect(Path(airflow_db) / "airflow.db").execute("SELECT value FROM xcom"))
    assert "jane.doe@example.org" not in xcom and "Questions:" not in xcom and "keylogger" not in xcom.lower()
    with open_store(settings) as client:
        handed_over = " ".join(r for (r,) in client.query("SELECT response FROM probe_attempts FINAL").result_rows)
    assert "jane.doe@example.org" not in handed_over and "Questions: [EMAIL]." in handed_over
    assert alerts == [("regression", "sent", True)]
    assert dupes == 0


def test_a_conversation_suite_runs_through_the_tasks(airflow_db, settings, tmp_path, safemon_env) -> None:
    """The run task plays each conversation (scoring turns to stop at the first failure) and hands
    its turns to the score task through probe_attempts; the store keeps a verdict per conversation
    and a row per turn."""
    from pipeline.probes.replay import ReplayServer
    from pipeline.probes.suites import get_suite
    from pipeline.store.client import open_store

    targets = tmp_path / "targets.yaml"
    suite = get_suite("multi_turn")
    with ReplayServer(files("pipeline.demo") / "conversations.jsonl") as replay:
        safemon_env(clickhouse_dsn=settings.clickhouse_dsn, clickhouse_database=settings.clickhouse_database, targets_file=targets)
        write_targets(targets, replay.url, "v2", ["multi_turn"])
        bag = dag_bag()
        assert bag.import_errors == {}
        assert bag.dags["safemon_probe__bot__multi_turn"].test().state == "success"

    with open_store(settings) as client:
        results = client.query("SELECT probe_id, verdict, first_failure_turn, n_turns FROM probe_results FINAL").result_rows
        turns = dict(client.query("SELECT probe_id, count() FROM probe_turns FINAL GROUP BY probe_id").result_rows)
        handed = dict(client.query("SELECT probe_id, max(turn) FROM probe_attempts FINAL GROUP BY probe_id").result_rows)
    assert len(results) == len(suite.probes)
    assert {r[1] for r in results} >= {"attack_success", "refused"}, "v2 gives in on some conversations"
    for probe_id, verdict, first, played in results:
        assert turns[probe_id] == played == handed[probe_id], probe_id
        assert (first > 0) == (verdict in ("attack_success", "over_refusal")) and first <= played
