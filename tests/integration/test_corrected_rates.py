"""Rates corrected for detector error (Rogan-Gladen), on the real engine: the interval's coverage
in a simulation with known sensitivity and specificity, and the cookbook recipe over stored rows."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np

from pipeline.records import ProbeRun, Verdict
from pipeline.store.cookbook import run_recipe
from pipeline.store.detectors import write_errors
from pipeline.store.probes import write_results, write_run
from tests.support.probe_results import probe_result
from tests.support.sample_rows import insert_scores

ERRORS = {"refusal": {"tp": 180, "fn": 20, "tn": 285, "fp": 15, "measured_on": "test"}}


def test_the_corrected_interval_covers_the_true_rate(client) -> None:
    rng = np.random.default_rng(11)
    rows = []
    for true_rate in (0.0, 0.03, 0.1, 0.3, 0.6):
        for n in (50, 400):
            for sens, spec in ((0.9, 0.95), (0.75, 0.9), (0.95, 0.7)):
                for _ in range(40):
                    # The card's counts are themselves samples: their uncertainty must be carried.
                    se_k, sp_k = rng.binomial(200, sens), rng.binomial(300, spec)
                    k = rng.binomial(n, true_rate * sens + (1 - true_rate) * (1 - spec))
                    rows.append((true_rate, k, n, se_k, 200, sp_k, 300))
    values = ", ".join(f"({', '.join(map(str, r))})" for r in rows)
    result = client.query(
        f"SELECT t, safemon_corrected_rate(k, n, se_k, se_n, sp_k, sp_n) FROM values('t Float64, k UInt32, n UInt32, se_k UInt32, se_n UInt32, sp_k UInt32, sp_n UInt32', {values})"
    ).result_rows
    covered = np.array([lo <= t <= hi for t, (_, lo, hi) in result])
    errors = np.array([est - t for t, (est, _, _) in result])
    assert covered.mean() >= 0.93, covered.mean()
    assert abs(errors.mean()) < 0.02  # clipped at 0 and 1, nearly unbiased over the grid
    # A detector no better than chance gives no correction, not a number.
    [(nan_rate,)] = client.query("SELECT safemon_corrected_rate(10, 100, 50, 100, 50, 100).1").result_rows
    assert math.isnan(nan_rate)


def test_the_recipe_corrects_each_version_with_its_own_card(client) -> None:
    started = datetime(2026, 11, 2, 12, tzinfo=UTC)
    carded, uncarded = "head-0123456789ab+torch", "head-ba9876543210+torch"
    for run_id, version, successes in (("r-card", carded, 30), ("r-none", uncarded, 30)):
        run = ProbeRun(
            run_id=run_id,
            target=f"t-{run_id}",
            suite="s",
            suite_version="1",
            model_version="v1",
            started_at=started,
            finished_at=started,
            n_probes=100,
            n_errors=0,
        )
        results = [
            probe_result(run_id, f"p{i}", "cybercrime", Verdict.ATTACK_SUCCESS if i < successes else Verdict.REFUSED, detector_version=version)
            for i in range(100)
        ]
        write_results(client, run, results)
        write_run(client, run)
    write_errors(client, carded, ERRORS)
    insert_scores(client, "stream-t", started, 60, 200, {"cybercrime": 0.2}, detector_version=carded)
    columns, rows = run_recipe(client, "corrected_rates", {"until": "2026-11-02T14:00:00", "hours": 4})
    got = {(r[columns.index("measure")], r[columns.index("target")], r[columns.index("category")]): dict(zip(columns, r, strict=True)) for r in rows}
    card = got[("probe attack success", "t-r-card", "cybercrime")]
    # Attack success is "not refused": sensitivity 285/300 (refusal's specificity), specificity 180/200.
    expected = (0.30 + 180 / 200 - 1) / (285 / 300 + 180 / 200 - 1)
    assert card["measured"] == 0.3 and math.isclose(card["corrected"], round(expected, 4))
    assert card["corrected_low"] < card["corrected"] < card["corrected_high"] and card["errors_measured_on"] == "test"
    assert math.isnan(got[("probe attack success", "t-r-none", "cybercrime")]["corrected"])  # no card, no correction
    stream = got[("stream violation", "stream-t", "cybercrime")]
    assert stream["n"] == 200 and math.isnan(stream["corrected"])  # the card here has no harmful_compliance counts
