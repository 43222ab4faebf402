"""Hourly: each target's embedding drift, last hour vs its reference (default: the same hour of the last 4 weeks)."""

import pendulum
from airflow.sdk import dag, task

from pipeline import tasks


@dag(
    dag_id="safemon_drift_checks",
    schedule="@hourly",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=tasks.DEFAULT_ARGS,
    tags=["safemon", "drift"],
)
def drift_checks():
    checked = task(tasks.check_drift, task_id="check")()
    task(tasks.send_alerts, task_id="alert")(checked)


drift_checks()
