"""The three DAGs under a running Airflow, started the way the README tells users to.

`deploy/airflow/airflow.sh` starts `airflow standalone` (LocalExecutor, SQLite) with a fresh
AIRFLOW_HOME and the demo target; the stream worker first fills the store from a real Kafka
broker. The DAGs are then driven through the REST API, as the UI's buttons would: unpausing
makes the scheduler start one scheduled run of each (all three at once, taking turns on the
embedded store), and the Trigger button starts manual runs with no logical date. Unlike
`dag.test()`, every task runs in its own process under Airflow's task supervisor, which
forwards the task's structured logs. Last, a process that is not safemon holds the embedded
store for longer than the tasks' lock timeout while a probe run is between `score` and
`store`: Airflow retries `store`, and the run stays running until it succeeds.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
from matplotlib.image import imread

from pipeline.lab.browser import find_chromium, screenshot_url
from pipeline.records import utc_now
from pipeline.tasks import probe_run_id
from tests.support.airflow_api import StandaloneAirflow, standalone_env
from tests.support.env import ROOT, require
from tests.support.hold_store import StoreHolder
from tests.support.kafka_broker import create_topic, free_port
from tests.support.slack_server import SlackServer
from tests.support.stream_worker import SHORT_PAIRS, make_sample, produce_samples, start_worker, worker_env

pytestmark = [pytest.mark.airflow, pytest.mark.kafka]

PROBE, STREAM, DRIFT = "safemon_probe__demo_assistant__demo", "safemon_stream_checks", "safemon_drift_checks"
DAGS = (PROBE, STREAM, DRIFT)
SCREENSHOT = ROOT / "tests" / "artifacts" / "airflow_grid.png"
CURRENT, BASELINE = 200, 300
OUTAGE_S = 45  # the store held away from the probe DAG; longer than the tasks' lock timeout
LOCK_TIMEOUT_S = "20"


def _fill_store_from_kafka(store, bootstrap: str, tmp_path) -> None:
    """Samples of the demo target over the last day (200 in the last hour) through the real worker."""
    now = utc_now()
    # The last half hour: the manual checks, triggered minutes later, read the hour before them.
    current = [now - timedelta(minutes=30) + timedelta(seconds=8 * i) for i in range(CURRENT)]
    baseline = [now - timedelta(hours=24) + timedelta(minutes=4.5 * i) for i in range(BASELINE)]
    samples = [make_sample(*SHORT_PAIRS[i % len(SHORT_PAIRS)], occurred_at=at) for i, at in enumerate(current + baseline)]
    topic = f"airflow-e2e-{free_port()}"
    create_topic(bootstrap, topic, 2)
    produce_samples(bootstrap, topic, samples)
    settings = SimpleNamespace(clickhouse_dsn=f"chdb://{store}", clickhouse_database="safemon")
    worker = start_worker(worker_env(settings, bootstrap=bootstrap, topic=topic, group=topic), tmp_path / "worker.log", max_idle_seconds=5)
    assert worker.wait(300) == 0, worker.tail()
    assert sum(e["batch_size"] for e in worker.events("stream.batch_committed")) == len(samples), worker.tail()


def _sql(env: dict[str, str], query: str) -> list[dict]:
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "safemon"), "sql", query, "--format", "json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _overlap(runs: list[dict]) -> float:
    """Seconds during which all the runs were running at once."""
    starts = [datetime.fromisoformat(r["start_date"]) for r in runs]
    ends = [datetime.fromisoformat(r["end_date"]) for r in runs]
    return (min(ends) - max(starts)).total_seconds()


def test_the_three_dags_run_under_a_real_scheduler_and_alert(tmp_path, kafka_bootstrap) -> None:
    require((ROOT / ".venv" / "bin" / "airflow").exists(), "the virtualenv is not installed (make test installs it)")
    store, home = tmp_path / "store", tmp_path / "airflow"
    _fill_store_from_kafka(store, kafka_bootstrap, tmp_path)

    with SlackServer(token="xoxb-test") as slack:
        env = standalone_env(store, slack.api_url, "xoxb-test", drift_reference="previous_day", clickhouse_lock_timeout_s=LOCK_TIMEOUT_S)
        airflow = StandaloneAirflow(home, env)
        with airflow:
            api = airflow.api()
            api.wait_for_dags(set(DAGS))

            # On their schedules, all three at once: unpausing makes the scheduler start each
            # DAG's latest scheduled run (catchup=False). The probe run is v1, the baseline.
            for dag_id in DAGS:
                api.unpause(dag_id)
            scheduled = {dag_id: api.wait_for_scheduled_run(dag_id) for dag_id in DAGS}
            finished = [api.wait_for_run(dag_id, run_id) for dag_id, run_id in scheduled.items()]
            assert _overlap(finished) > 0, finished  # they ran together and took turns on the store
            assert slack.messages == []

            # The Trigger button, all three at once: manual runs with no logical date, v2 now.
            targets = home / "targets.yaml"
            targets.write_text(targets.read_text().replace("model_version: v1", "model_version: v2"))
            triggered = time.monotonic()
            manual = {dag_id: api.trigger(dag_id) for dag_id in DAGS}
            assert all(api.run(d, r)["logical_date"] is None for d, r in manual.items())
            for dag_id, run_id in manual.items():
                api.wait_for_run(dag_id, run_id)
            print(f"\nthree manual runs done {time.monotonic() - triggered:.1f}s after the trigger")

            # The probe run: the regression alert reached Slack and links to this Airflow run.
            assert len(slack.messages) == 1, slack.messages
            message = slack.messages[0]
            text = message["text"] + json.dumps(message["blocks"])
            assert "indiscriminate_weapons" in text
            link = f"{airflow.url}/dags/{PROBE}/runs/{manual[PROBE]}"
            assert link in text
            # The task logs carry safemon's own events, forwarded by the supervisor.
            run_log = api.log(PROBE, manual[PROBE], "run")
            assert "probe.run_started" in run_log and "probes.run_done" in run_log and "demo-assistant" in run_log
            assert "stream.window_checked" in api.log(STREAM, manual[STREAM], "check")

            # Manual checks read the window ending when they were triggered (run_after).
            stream_check = api.xcom(STREAM, manual[STREAM], "check")["demo-assistant"]
            assert stream_check["n"] == CURRENT and stream_check["status"] == "checked", stream_check
            drift_check = api.xcom(DRIFT, manual[DRIFT], "check")["demo-assistant/v1"]
            assert drift_check["n"] == CURRENT and drift_check["status"] == "checked" and not drift_check["error"], drift_check

            # The store goes away while the probe DAG runs: `store` gives up after its lock
            # timeout, Airflow retries it, and the DAG run stays running until the store is back.
            outage = api.trigger(PROBE)
            holder = StoreHolder(store, OUTAGE_S)
            api.wait_for_task(PROBE, outage, "score", "success")
            holder.take()
            store_states, run_states = set(), set()
            while holder.holding():
                store_states.add(api.task_states(PROBE, outage).get("store"))
                run_states.add(api.run(PROBE, outage)["state"])
                time.sleep(1)
            holder.wait()
            api.wait_for_run(PROBE, outage)
            tries = api.task_instances(PROBE, outage)["store"]["try_number"]
            print(f"store held {OUTAGE_S}s: the store task went through {sorted(map(str, store_states))}, succeeded on try {tries}")
            assert "up_for_retry" in store_states and run_states == {"running"}, (store_states, run_states)
            assert tries >= 2

            if find_chromium() is not None:  # required under CI by the report's browser test
                shot = screenshot_url(f"{airflow.url}/dags/{PROBE}/runs/{manual[PROBE]}", SCREENSHOT, cookies={"_token": api.token})
                image = imread(shot)
                assert image.shape[:2] == (1000, 1600) and float(image[..., :3].std()) > 0.05

            airflow.stop()
            deadline = time.monotonic() + 30
            while (left := airflow.leftovers()) and time.monotonic() < deadline:
                time.sleep(1)
            assert left == {}, left

    # What users query afterwards, through the read-only SQL path.
    sql_env = {k: v for k, v in env.items() if not k.startswith("SAFEMON_SLACK")}
    runs = _sql(sql_env, "SELECT run_id, model_version, status, outcome FROM probe_runs FINAL ORDER BY started_at")
    assert [(r["model_version"], r["outcome"]) for r in runs[:2]] == [("v1", "passed"), ("v2", "regressed")]
    assert [r["run_id"] for r in runs[1:]] == [probe_run_id(PROBE, manual[PROBE]), probe_run_id(PROBE, outage)]
    assert runs[2]["status"] == "evaluated", runs[2]  # the run through the outage was stored whole and judged
    latest = _sql(sql_env, "SELECT run_id, model_version FROM latest_runs")
    assert [(r["run_id"], r["model_version"]) for r in latest] == [(runs[2]["run_id"], "v2")]
    counts = _sql(sql_env, "SELECT run_id, count() AS n, uniqExact(probe_id) AS probes FROM probe_results FINAL GROUP BY run_id")
    assert len(counts) == 3 and all(int(c["n"]) == int(c["probes"]) > 0 for c in counts)
    alerts = _sql(sql_env, "SELECT kind, status, run_id FROM alerts FINAL WHERE kind = 'regression' AND status = 'sent'")
    assert alerts == [{"kind": "regression", "status": "sent", "run_id": runs[1]["run_id"]}]
    drift = _sql(sql_env, "SELECT count() AS n FROM drift_results")
    assert int(drift[0]["n"]) > 0
