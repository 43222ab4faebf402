"""The functions Airflow tasks call: the only module DAG files import.

Importing this module is cheap (no torch, Great Expectations, ClickHouse or scipy): DAG
files are parsed often, and heavy modules are imported inside the task functions.
Tasks pass identifiers through XCom (Airflow keeps XCom in its metadata database, so
no prompt or response goes there) and key everything they write by a run_id derived
from the Airflow run, so a retried task repeats its work without adding rows.
"""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from pipeline.logs import guard_task_logging
from pipeline.probes.targets import TargetConfig, load_targets
from pipeline.records import RunStatus
from pipeline.settings import get_settings

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "safemon",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}


@dataclass(frozen=True)
class ProbeDagSpec:
    """One probe DAG: a (target, suite) pair from the targets file."""

    dag_id: str
    target: str
    suite: str
    schedule: str
    model_version: str

    @property
    def tags(self) -> list[str]:
        return ["safemon", "probes", f"target:{self.target}", f"suite:{self.suite}"]


def probe_dag_specs() -> list[ProbeDagSpec]:
    """The probe DAGs to build, read from `SAFEMON_TARGETS_FILE` (none if it is absent)."""
    path = get_settings().targets_file
    if not path.exists():
        return []
    return [
        ProbeDagSpec(f"safemon_probe__{t.name}__{s}".replace("-", "_"), t.name, s, t.schedule, t.model_version) for t in load_targets(path) for s in t.suites
    ]


def airflow_task(fn: Callable) -> Callable:
    """Mark a function as a task body: keep its events clear of the log keys Airflow reserves."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        guard_task_logging()
        return fn(*args, **kwargs)

    return run


def probe_run_id(dag_id: str, airflow_run_id: str) -> str:
    """A run_id that is the same for every try of the same Airflow run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"safemon:{dag_id}:{airflow_run_id}"))


def _airflow_run() -> tuple[str, str]:
    from airflow.sdk import get_current_context

    context = get_current_context()
    return context["dag"].dag_id, context["run_id"]


def window_end(context: Any) -> datetime:
    """The end of the window a check reads: the data interval's end, else the run's own time.

    A manual trigger in Airflow 3 (UI or REST API with `logical_date: null`) has no data
    interval and no logical date; its `run_after` is when it was triggered.
    """
    return context.get("data_interval_end") or context.get("logical_date") or context["dag_run"].run_after


def _target(name: str) -> TargetConfig:
    for target in load_targets(get_settings().targets_file):
        if target.name == name:
            return target
    raise LookupError(f"target {name!r} is not in {get_settings().targets_file}")


def _link(dag_id: str, airflow_run_id: str) -> str | None:
    base = get_settings().airflow_url
    return f"{base.rstrip('/')}/dags/{dag_id}/runs/{airflow_run_id}" if base else None


@airflow_task
def run_probes(target: str, suite: str) -> str:
    """Task `run`: send the suite to the target; store the run (status `running`) and its attempts,
    redacted on receipt. XCom, which Airflow keeps in its database, carries only the run_id."""
    from pipeline.probes.runner import execute
    from pipeline.probes.suites import get_suite
    from pipeline.store import probes as probe_store
    from pipeline.store.client import open_store

    settings = get_settings()
    dag_id, airflow_run_id = _airflow_run()
    run, attempts = execute(_target(target), get_suite(suite), settings, probe_run_id(dag_id, airflow_run_id))
    with open_store(settings, migrated=True) as client:
        probe_store.write_attempts(client, run, attempts)
        probe_store.write_run(client, replace(run, status=RunStatus.RUNNING))
    return run.run_id


@airflow_task
def score_run(probe_run: str) -> str:
    """Task `score`: embed and detect each stored (redacted) attempt, ask the judge about the
    uncertain ones (when one is configured); write the results."""
    from pipeline.detectors import Scorer
    from pipeline.probes.runner import judge, judge_cascade, score
    from pipeline.probes.suites import get_suite
    from pipeline.store import probes as probe_store
    from pipeline.store.client import open_store
    from pipeline.store.detectors import write_errors

    settings = get_settings()
    with open_store(settings) as client:
        run = probe_store.read_run(client, probe_run)
        suite = get_suite(run.suite)
        attempts = probe_store.read_attempts(client, probe_run, list(suite.probes))
    scorer = Scorer.from_settings(settings)
    # The store is free while the model and the judge run.
    run, results = judge(run, score(run, attempts, scorer), suite, judge_cascade(_target(run.target), settings, scorer))
    with open_store(settings) as client:
        probe_store.write_results(client, run, results)
        write_errors(client, scorer.version, scorer.errors)
        probe_store.write_run(client, run)  # the judge's counts; still `running` until `store`
    return probe_run


@airflow_task
def store_run(probe_run: str) -> str:
    """Task `store`: mark the run scored once its results are stored; idempotent per run_id."""
    from pipeline.store import probes as probe_store
    from pipeline.store.client import open_store

    with open_store(get_settings()) as client:
        run = probe_store.read_run(client, probe_run)
        stored = probe_store.count_results(client, probe_run)
        if stored != run.n_probes:
            raise RuntimeError(f"probe run {probe_run}: {stored} of {run.n_probes} results stored; the score task must run again")
        probe_store.write_run(client, replace(run, status=RunStatus.SCORED))
    return probe_run


@airflow_task
def evaluate_run(probe_run: str) -> dict:
    """Task `evaluate`: data contract, statistics against the baseline, alert decision."""
    from pipeline.checks.probes import evaluate
    from pipeline.store import probes as probe_store
    from pipeline.store.client import open_store

    settings = get_settings()
    dag_id, airflow_run_id = _airflow_run()
    with open_store(settings) as client:
        run = probe_store.read_run(client, probe_run)
        target = _target(run.target)
        result = evaluate(client, run, settings, pinned_model_version=target.baseline_model_version, link=_link(dag_id, airflow_run_id))
    return {
        "run_id": probe_run,
        "outcome": str(result.run.outcome),  # XCom stores JSON: plain strings, not enums
        "regressed": [c.category for c in result.comparisons if c.regressed],
        "alert_id": result.alert.alert.alert_id if result.alert else None,
        "alert_status": str(result.alert.status) if result.alert else None,
    }


@airflow_task
def check_stream_windows() -> dict:
    """Task `check` of the stream DAG: each target's violation rates, last window vs baseline."""
    from airflow.sdk import get_current_context

    from pipeline.checks.stream import check_all
    from pipeline.store.client import open_store

    context = get_current_context()
    end = window_end(context)
    with open_store(get_settings(), migrated=True) as client:
        checks = check_all(client, get_settings(), end, link=_link(context["dag"].dag_id, context["run_id"]))
    return {c.target: {"status": c.status, "n": c.n_current, "regressed": [x.category for x in c.comparisons if x.regressed]} for c in checks}


@airflow_task
def check_stream_lag() -> dict:
    """Task `check_lag` of the stream DAG: has each consumer group's stored lag kept growing?"""
    from airflow.sdk import get_current_context

    from pipeline.checks.lag import check_all
    from pipeline.store.client import open_store

    context = get_current_context()
    with open_store(get_settings(), migrated=True) as client:
        checks = check_all(client, get_settings(), window_end(context), link=_link(context["dag"].dag_id, context["run_id"]))
    # XCom is JSON: a lag that never changed has no p-value (nan), which JSON cannot carry.
    return {
        c.group: {"status": c.status, "first": c.first, "last": c.last, "p_value": None if math.isnan(c.p_value) else c.p_value, "growing": c.growing}
        for c in checks
    }


@airflow_task
def send_alerts(evaluation: dict | None = None) -> dict:
    """Task `alert`: deliver every pending alert (this run's and earlier failed ones)."""
    from pipeline.alerts.dispatch import deliver_pending
    from pipeline.store.client import open_store

    with open_store(get_settings()) as client:
        report = deliver_pending(client, get_settings())
    return {**asdict(report), "evaluation": evaluation}


@airflow_task
def check_drift() -> dict:
    """Task `check` of the drift DAG: each target's embedding window against its reference."""
    from airflow.sdk import get_current_context

    from pipeline.checks.drift import check_all
    from pipeline.detectors.embedder import embedder_from_settings
    from pipeline.detectors.shipped import load_drift_head
    from pipeline.drift.attacks import AttackProfile
    from pipeline.store.client import open_store

    settings = get_settings()
    context = get_current_context()
    end = window_end(context)
    attacks = AttackProfile.builtin(embedder_from_settings(settings), load_drift_head(settings))
    with open_store(settings, migrated=True) as client:
        checks = check_all(client, settings, end, attacks, link=_link(context["dag"].dag_id, context["run_id"]))
    return {
        f"{c.target}/{c.model_version}": {"status": c.status, "n": c.n_current, "drifted": list(c.comparison.drifted) if c.comparison else [], "error": c.error}
        for c in checks
    }


@airflow_task
def check_judge_agreement() -> dict:
    """Task `check_agreement` of the stream DAG: does the judge agree with the heads' audited verdicts
    as often as over the days before, per target and category?"""
    from airflow.sdk import get_current_context

    from pipeline.checks.agreement import check_all
    from pipeline.store.client import open_store

    context = get_current_context()
    with open_store(get_settings(), migrated=True) as client:
        checks = check_all(client, get_settings(), window_end(context), link=_link(context["dag"].dag_id, context["run_id"]))
    # Counts and category names only: no prompt or response goes to XCom.
    return {
        c.target: {
            "status": str(c.status),
            "audited": c.n_current,
            "baseline_audited": c.n_baseline,
            "fell": [x.category for x in c.comparisons if x.regressed],
        }
        for c in checks
    }
