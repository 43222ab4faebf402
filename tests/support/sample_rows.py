"""Scored stream rows written straight into sample_scores, for tests of what reads them."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import numpy as np

from pipeline.taxonomy import HAZARDS


def insert_scores(
    client,
    target: str,
    start: datetime,
    minutes: float,
    n: int,
    flagged: dict[str, float],
    seed: int = 0,
    detector_version: str = "exemplars-test+torch",
    decided_by: str = "head",
) -> None:
    """`n` samples spread over `minutes` from `start`; each hazard flagged with the given probability,
    each decided by `decided_by` (head, judge, or unscored)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        hits = sorted(c for c, p in flagged.items() if rng.random() < p)
        scores = {c: (0.9 if c in hits else 0.05) for c in HAZARDS}
        rows.append(
            [
                str(uuid.uuid4()),
                start + timedelta(minutes=minutes * i / n),
                target,
                "v1",
                f"c{i}",
                2,
                "user text [EMAIL]",
                "assistant text",
                not hits,
                0.1,
                scores,
                max(scores.values()),
                max(scores, key=scores.get),
                hits,
                detector_version,
                decided_by,
            ]
        )
    client.insert(
        "sample_scores",
        rows,
        column_names=[
            "sample_id",
            "occurred_at",
            "target",
            "model_version",
            "conversation_id",
            "n_turns",
            "user_text",
            "assistant_text",
            "refused",
            "refusal_score",
            "violation_scores",
            "violation_score",
            "violation_category",
            "flagged_categories",
            "detector_version",
            "decided_by",
        ],
    )
