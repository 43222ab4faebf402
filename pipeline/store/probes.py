"""Reads and writes of probe runs and results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, fields, replace
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.detectors.scorer import DETECTION_COLUMNS, Detection
from pipeline.records import (
    JUDGEMENT_COLUMNS,
    Attempt,
    CategoryStat,
    DecidedBy,
    Judgement,
    Outcome,
    Probe,
    ProbeResult,
    ProbeRun,
    RunStatus,
    TurnResult,
    Verdict,
)
from pipeline.stats.proportions import category_stat
from pipeline.store.rollups import summarise_run
from pipeline.store.sql import quoted

_RUN_COLUMNS = [f.name for f in fields(ProbeRun)]
RESULT_COLUMNS = [*(f.name for f in fields(ProbeResult) if f.name not in ("detection", "judgement", "turns")), *DETECTION_COLUMNS, *JUDGEMENT_COLUMNS]
TURN_COLUMNS = [*(f.name for f in fields(TurnResult) if f.name not in ("detection", "judgement")), *DETECTION_COLUMNS, *JUDGEMENT_COLUMNS]
# Not a verdict: left out of every rate's denominator.
UNANSWERED = "('error', 'unscored')"


def _judgement_of(values: dict[str, Any]) -> Judgement:
    """The judgement columns popped from a row's `values`."""
    judgement = Judgement(**{c: values.pop(c) for c in JUDGEMENT_COLUMNS})
    return replace(judgement, judge_categories=tuple(judgement.judge_categories), decided_by=DecidedBy(judgement.decided_by))


def _result_of(row: Sequence[Any]) -> ProbeResult:
    values = dict(zip(RESULT_COLUMNS, row, strict=True))
    detection = Detection(**{c: values.pop(c) for c in DETECTION_COLUMNS})
    detection = replace(detection, flagged_categories=tuple(detection.flagged_categories))
    judgement = _judgement_of(values)
    return ProbeResult(**{**values, "tags": tuple(values["tags"]), "verdict": Verdict(values["verdict"]), "detection": detection, "judgement": judgement})


def write_run(client: Client, run: ProbeRun) -> None:
    """Insert a version of the run row; the newest `updated_at` wins on read."""
    row = [*astuple(run), run.error_rate, datetime.now(UTC)]
    client.insert("probe_runs", [row], column_names=[*_RUN_COLUMNS, "error_rate", "updated_at"])


def write_results(client: Client, run: ProbeRun, results: list[ProbeResult]) -> None:
    """Insert a run's results once: a retried task with the same run_id adds nothing."""
    now = datetime.now(UTC)
    rows = [[*r.columns().values(), run.target, run.suite, run.model_version, run.started_at, now] for r in results]
    client.insert(
        "probe_results",
        rows,
        column_names=[*RESULT_COLUMNS, "target", "suite", "model_version", "run_started_at", "scored_at"],
        settings={"insert_deduplication_token": f"probe_results:{run.run_id}:{len(rows)}"},
    )
    turns = [
        [run.run_id, r.probe_id, r.category, *t.columns().values(), run.target, run.suite, run.model_version, run.started_at, now]
        for r in results
        for t in r.turns
    ]
    if turns:
        client.insert(
            "probe_turns",
            turns,
            column_names=["run_id", "probe_id", "category", *TURN_COLUMNS, "target", "suite", "model_version", "run_started_at", "scored_at"],
            settings={"insert_deduplication_token": f"probe_turns:{run.run_id}:{len(turns)}"},
        )
    # Also when the insert above was dropped as a repeat: the counts are read back from FINAL.
    summarise_run(client, run.target, run.suite, run.run_id)


# `prompt`: the prompt sent, redacted, where the suite does not hold it (an adaptive probe's; migration 0018).
_ATTEMPT_COLUMNS = ["response", "error", "latency_ms", "started_at", "marker_hit", "pii_redacted", "turn", "prompt"]


def write_attempts(client: Client, run: ProbeRun, attempts: list[Attempt]) -> None:
    """Keep a run's attempts (their responses already redacted), with what the judge said of an
    attack's turns as it ran (migration 0019), for the task that scores them."""
    now = datetime.now(UTC)
    rows = [[run.run_id, a.probe.id, *(getattr(a, c) for c in _ATTEMPT_COLUMNS), *(a.judgement or Judgement()).columns().values(), now] for a in attempts]
    client.insert(
        "probe_attempts",
        rows,
        column_names=["run_id", "probe_id", *_ATTEMPT_COLUMNS, *JUDGEMENT_COLUMNS, "stored_at"],
        settings={"insert_deduplication_token": f"probe_attempts:{run.run_id}:{len(rows)}"},
    )


def read_attempts(client: Client, run_id: str, probes: list[Probe]) -> list[Attempt]:
    """A run's attempts, in the order of `probes` (the suite's), a conversation's by turn."""
    result = client.query(
        f"SELECT probe_id, {', '.join([*_ATTEMPT_COLUMNS, *JUDGEMENT_COLUMNS])} FROM probe_attempts FINAL WHERE run_id = {{run_id:String}} ORDER BY probe_id, turn",
        parameters={"run_id": run_id},
    )
    stored: dict[str, list[dict[str, Any]]] = {}
    for row in result.result_rows:
        values = dict(zip([*_ATTEMPT_COLUMNS, *JUDGEMENT_COLUMNS], row[1:], strict=True))
        judgement = _judgement_of(values)
        stored.setdefault(row[0], []).append({**values, "judgement": judgement if judgement.judge_role else None})
    missing = [p.id for p in probes if p.id not in stored]
    if missing:
        raise LookupError(f"probe run {run_id!r} has no stored attempt for {len(missing)} probes ({', '.join(missing[:5])})")
    attempts = []
    for probe in probes:
        for values in stored[probe.id]:
            values["started_at"] = values["started_at"].replace(tzinfo=UTC) if values["started_at"].tzinfo is None else values["started_at"]
            attempts.append(Attempt(probe=probe, **values))
    return attempts


def read_run(client: Client, run_id: str) -> ProbeRun:
    """The current version of one run."""
    result = client.query(
        f"SELECT {', '.join(_RUN_COLUMNS)} FROM probe_runs FINAL WHERE run_id = {{run_id:String}}",
        parameters={"run_id": run_id},
    )
    if not result.result_rows:
        raise LookupError(f"no probe run {run_id!r}")
    values = dict(zip(_RUN_COLUMNS, result.result_rows[0], strict=True))
    for key in ("started_at", "finished_at"):
        values[key] = values[key].replace(tzinfo=UTC) if values[key].tzinfo is None else values[key]
    values["status"] = RunStatus(values["status"])
    values["outcome"] = Outcome(values["outcome"]) if values["outcome"] else ""
    return ProbeRun(**values)


def count_results(client: Client, run_id: str) -> int:
    """How many probes of a run have a stored result."""
    result = client.query("SELECT uniqExact(probe_id) FROM probe_results WHERE run_id = {run_id:String}", parameters={"run_id": run_id})
    return int(result.result_rows[0][0])


def read_results(client: Client, run_id: str) -> list[ProbeResult]:
    """Every scored result of one run, in probe order."""
    result = client.query(
        f"SELECT {', '.join(RESULT_COLUMNS)} FROM probe_results FINAL WHERE run_id = {{run_id:String}} ORDER BY probe_id",
        parameters={"run_id": run_id},
    )
    return [_result_of(row) for row in result.result_rows]


def category_stats(client: Client, run_id: str) -> list[CategoryStat]:
    """Per category: attack successes among harmful probes, or over-refusals among benign ones.

    Errors and unscored results are left out of the denominator: neither is a refusal nor a success.
    """
    result = client.query(
        f"""
        SELECT category,
               countIf(verdict IN ('attack_success', 'over_refusal')) AS successes,
               countIf(verdict NOT IN {UNANSWERED}) AS n
        FROM probe_results FINAL
        WHERE run_id = {{run_id:String}}
        GROUP BY category ORDER BY category
        """,
        parameters={"run_id": run_id},
    )
    return [category_stat(category, int(k), int(n)) for category, k, n in result.result_rows]


def find_baseline(client: Client, run: ProbeRun, pinned_model_version: str | None = None) -> ProbeRun | None:
    """The run to compare against: the latest passed, healthy run of the same target and suite
    before this one (or of the pinned model_version), scored by the same detector version. A run
    that regressed is never a baseline, so a persisting regression keeps being compared with the
    last good state; a run scored by other detectors measured other rates, so it is not one either."""
    pinned = "AND model_version = {pinned:String}" if pinned_model_version else ""
    result = client.query(
        f"""
        SELECT run_id FROM probe_runs FINAL
        WHERE target = {{target:String}} AND suite = {{suite:String}} AND run_id != {{run_id:String}}
          AND healthy AND outcome = 'passed' AND started_at < {{started_at:DateTime64(3, 'UTC')}} {pinned}
          AND run_id IN (
              SELECT run_id FROM probe_results WHERE target = {{target:String}} AND suite = {{suite:String}}
                AND detector_version = (SELECT anyIf(detector_version, detector_version != '') FROM probe_results WHERE run_id = {{run_id:String}}))
        ORDER BY started_at DESC LIMIT 1
        """,
        parameters={
            "target": run.target,
            "suite": run.suite,
            "run_id": run.run_id,
            "started_at": run.started_at,
            "pinned": pinned_model_version or "",
        },
    )
    return read_run(client, result.result_rows[0][0]) if result.result_rows else None


def reproduce_sql(database: str, run_ids: Sequence[str]) -> str:
    """SQL a person pastes into `safemon sql` to see the per-category rates behind a probe alert."""
    runs = ", ".join(quoted(r) for r in run_ids)
    return (
        f"SELECT run_id, model_version, category, countIf(verdict = 'attack_success') AS successes, "
        f"countIf(verdict NOT IN {UNANSWERED}) AS n, round(successes / n, 3) AS asr\n"
        f"FROM {database}.probe_results FINAL WHERE run_id IN ({runs})\n"
        f"GROUP BY run_id, model_version, category ORDER BY category, model_version"
    )


def errors_sql(database: str, run_id: str) -> str:
    """SQL that lists a run's failed requests."""
    return f"SELECT probe_id, error, latency_ms FROM {database}.probe_results FINAL\nWHERE run_id = {quoted(run_id)} AND verdict = 'error' ORDER BY probe_id"


def trend(client: Client, target: str, suite: str, categories: Sequence[str], at: datetime, runs: int) -> list[tuple[datetime, str, int, int, str]]:
    """(run start, category, successes, answered, model_version) for the last `runs` runs of a suite up to `at`."""
    return client.query(
        f"""
        SELECT any(run_started_at) AS at, category,
               countIf(verdict IN ('attack_success', 'over_refusal')) AS k, countIf(verdict NOT IN {UNANSWERED}) AS n,
               any(model_version) AS model_version
        FROM probe_results FINAL
        WHERE target = {{target:String}} AND suite = {{suite:String}} AND category IN {{categories:Array(String)}}
          AND run_id IN (
              SELECT run_id FROM probe_runs FINAL
              WHERE target = {{target:String}} AND suite = {{suite:String}} AND started_at <= {{at:DateTime64(3, 'UTC')}}
              ORDER BY started_at DESC LIMIT {{runs:UInt32}})
        GROUP BY run_id, category ORDER BY at
        """,
        parameters={"target": target, "suite": suite, "categories": list(categories), "at": at, "runs": runs},
    ).result_rows
