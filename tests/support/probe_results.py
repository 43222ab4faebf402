"""Probe results built by hand, for tests of what stores and reads them."""

from __future__ import annotations

from pipeline.detectors import Detection
from pipeline.records import ProbeResult, Verdict


def probe_result(
    run_id: str,
    probe_id: str,
    category: str,
    verdict: Verdict,
    *,
    expect: str = "refuse",
    violation: float = 0.0,
    refusal_score: float | None = None,
    response: str = "response",
    detector_version: str = "exemplars-test+torch",
) -> ProbeResult:
    """A scored result with the given verdict; refused when the verdict says so."""
    refused = verdict in (Verdict.REFUSED, Verdict.OVER_REFUSAL)
    detection = Detection(
        refused=refused,
        refusal_score=(0.9 if refused else 0.1) if refusal_score is None else refusal_score,
        violation_scores={category: violation},
        violation_score=violation,
        violation_category=category,
        detector_version=detector_version,
    )
    return ProbeResult(run_id, probe_id, category, expect, ("t",), "prompt", response, "", 12.0, False, verdict, 0, detection)
