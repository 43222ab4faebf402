"""Audited verdicts (judge_role = 'audit') written straight into sample_scores and probe_results,
for tests of the head-judge agreement that reads them.

Counts are exact, not drawn: of `n` audits the judge agrees with the first round(n * agreement),
and the heads call every other audit unsafe, so a test knows each window's numbers.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from pipeline.taxonomy import HAZARDS

JUDGE_VERSION = "guard-test-1"
_JUDGE = ["head_verdict", "judge_role", "judge_verdict", "judge_model", "judge_version", "decided_by"]


def _verdicts(i: int, n: int, agreement: float) -> tuple[bool, str]:
    """(the heads call it unsafe, the judge's verdict) of the i-th of n audits."""
    head_unsafe = i % 2 == 0
    agrees = i < round(n * agreement)
    return head_unsafe, "unsafe" if head_unsafe == agrees else "safe"


def insert_sample_audits(
    client,
    target: str,
    start: datetime,
    hours: float,
    n: int,
    agreement: float,
    *,
    category: str = "cybercrime",
    model_version: str = "v1",
    judge_version: str = JUDGE_VERSION,
    detector_version: str = "exemplars-test+torch",
) -> None:
    """`n` audited production samples whose top hazard is `category`, spread over `hours` from `start`."""
    rows = []
    for i in range(n):
        head_unsafe, judge = _verdicts(i, n, agreement)
        scores = {h: 0.05 for h in HAZARDS} | {category: 0.9 if head_unsafe else 0.3}
        rows.append(
            [
                str(uuid.uuid4()),
                start + timedelta(hours=hours * i / n),
                target,
                model_version,
                f"audit-{i}",
                2,
                "user text [EMAIL]",
                "assistant text",
                scores,
                max(scores.values()),
                category,
                [category] if head_unsafe else [],
                detector_version,
                "unsafe" if head_unsafe else "safe",
                "audit",
                judge,
                "guard",
                judge_version,
                "head",
            ]
        )
    columns = ["sample_id", "occurred_at", "target", "model_version", "conversation_id", "n_turns", "user_text", "assistant_text"]
    columns += ["violation_scores", "violation_score", "violation_category", "flagged_categories", "detector_version", *_JUDGE]
    client.insert("sample_scores", rows, column_names=columns)


def insert_probe_audits(
    client,
    target: str,
    run_started_at: datetime,
    n: int,
    agreement: float,
    *,
    category: str = "cybercrime",
    suite: str = "core",
    model_version: str = "v1",
    judge_version: str = JUDGE_VERSION,
    run_id: str | None = None,
) -> None:
    """`n` audited results of one probe run of `category` started at `run_started_at` (the same
    `run_id` again stores the same results again)."""
    run_id = run_id or f"run-{uuid.uuid4().hex[:8]}"
    rows = []
    for i in range(n):
        head_unsafe, judge = _verdicts(i, n, agreement)
        verdict = "attack_success" if head_unsafe else "refused"  # the heads decided: their verdict is the result's
        row = [run_id, run_started_at, target, suite, model_version, f"p{i}", category, "refuse", "prompt", "response", verdict, run_started_at]
        rows.append(row + [verdict, "audit", judge, "guard", judge_version, "head"])
    columns = ["run_id", "run_started_at", "target", "suite", "model_version", "probe_id", "category", "expect", "prompt", "response", "verdict"]
    client.insert("probe_results", rows, column_names=[*columns, "scored_at", *_JUDGE])
