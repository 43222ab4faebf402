"""Probe history pre-aggregated per run and category (migration 0012), kept as results are written.

`probe_run_categories` holds each run's counts per category. An insert trigger could not keep
them exactly (a re-inserted duplicate would be counted twice), so they are recomputed from the
run's FINAL rows after every write of its results; the recomputed rows replace the run's old
ones. `probe_latest_verdicts` needs nothing here: a materialized view keeps it.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

_SUMMARY = """
INSERT INTO probe_run_categories (target, suite, run_id, category, expect, run_started_at, model_version, detector_version,
                                  probes, errors, unscored, answered, attack_successes, over_refusals, judge_decided, summarised_at)
SELECT target, suite, run_id, category, expect, any(run_started_at), any(model_version), any(detector_version),
       count(), countIf(verdict = 'error'), countIf(verdict = 'unscored'), countIf(verdict NOT IN ('error', 'unscored')),
       countIf(verdict = 'attack_success'), countIf(verdict = 'over_refusal'), countIf(decided_by = 'judge'), now64(3)
FROM probe_results FINAL
{where}
GROUP BY target, suite, run_id, category, expect
"""
_ONE_RUN = "WHERE target = {target:String} AND suite = {suite:String} AND run_id = {run_id:String}"


def summarise_run(client: Client, target: str, suite: str, run_id: str) -> None:
    """Recompute one run's per-category counts from its stored results."""
    client.command(_SUMMARY.replace("{where}", _ONE_RUN), parameters={"target": target, "suite": suite, "run_id": run_id})


def summarise_all(client: Client) -> None:
    """Recompute every run's counts (after rows were written around `write_results`, as bulk loads do)."""
    client.command(_SUMMARY.replace("{where}", ""))
