"""One probe DAG per (target, suite) in SAFEMON_TARGETS_FILE: run -> score -> store -> evaluate -> alert."""

import pendulum
from airflow.sdk import dag, task

from pipeline import tasks


def build(spec: tasks.ProbeDagSpec):
    @dag(
        dag_id=spec.dag_id,
        schedule=spec.schedule,
        start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        default_args=tasks.DEFAULT_ARGS,
        tags=spec.tags,
        doc_md=f"Probe suite `{spec.suite}` against target `{spec.target}` ({spec.model_version}).",
    )
    def probe_suite():
        sent = task(tasks.run_probes, task_id="run")(spec.target, spec.suite)
        scored = task(tasks.score_run, task_id="score")(sent)
        stored = task(tasks.store_run, task_id="store")(scored)
        evaluation = task(tasks.evaluate_run, task_id="evaluate")(stored)
        task(tasks.send_alerts, task_id="alert")(evaluation)

    return probe_suite()


for _spec in tasks.probe_dag_specs():
    globals()[_spec.dag_id] = build(_spec)
