"""The data contract of a probe run's results: is the run healthy enough for a verdict?"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from pipeline.quality.suites import QualityReport, validate
from pipeline.records import DecidedBy, ProbeResult, Verdict
from pipeline.settings import Settings
from pipeline.store.probes import RESULT_COLUMNS


def check_results(results: Sequence[ProbeResult], settings: Settings) -> QualityReport:
    """Validate scored results against `schemas/expectations/probe_results.json`."""
    frame = pd.DataFrame([r.columns() for r in results], columns=RESULT_COLUMNS)
    errored = frame["verdict"] == Verdict.ERROR
    frame["verdict_matches_error"] = errored == (frame["error"] != "")
    frame["unscored_matches_decider"] = (frame["verdict"] == Verdict.UNSCORED) == (frame["decided_by"] == DecidedBy.UNSCORED)
    # A request may be retried: the slowest sane latency is every attempt timing out.
    max_latency_ms = settings.target_timeout_s * 1000 * (settings.target_max_retries + 1) + 60_000
    return validate(
        "probe_results",
        frame,
        {"max_latency_ms": max_latency_ms, "min_success_rate": 1 - settings.max_error_rate, "min_scored_rate": 1 - settings.judge_max_unscored_rate},
    )
