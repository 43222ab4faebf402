"""Hourly: each target's violation rate per category in production traffic, last hour vs the day before,
whether the consumer lag kept growing, and whether the judge still agrees with the heads' audited verdicts."""

import pendulum
from airflow.sdk import dag, task

from pipeline import tasks


@dag(
    dag_id="safemon_stream_checks",
    schedule="@hourly",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=tasks.DEFAULT_ARGS,
    tags=["safemon", "stream"],
)
def stream_checks():
    checked = task(tasks.check_stream_windows, task_id="check")()
    lagging = task(tasks.check_stream_lag, task_id="check_lag")()
    agreeing = task(tasks.check_judge_agreement, task_id="check_agreement")()
    [lagging, agreeing] >> task(tasks.send_alerts, task_id="alert")(checked)


stream_checks()
