"""The held-out protocol of the detector evaluation tests: fit heads on some groups, predict the rest."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import structlog

log = structlog.get_logger(__name__)


def fit_and_predict_heldout(frame: pd.DataFrame, by: str, key: str) -> tuple[pd.DataFrame, pd.DataFrame, Any, int]:
    """Hold out 30% of the `by` groups (seed 0), fit heads on the rest, predict the held-out rows.

    Returns the held-out rows, their predictions, the fitted HeadSet and the number of training
    rows; `key` is the frame column the split must keep disjoint.
    """
    from pipeline.detectors import DetectorStack, get_embedder
    from pipeline.lab.evaluation import holdout_mask
    from pipeline.lab.training import embed_frame, fit_heads, predict_frame, take

    test = holdout_mask(frame, by, test_size=0.3, seed=0)
    train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
    assert set(frame[key].iloc[train_rows]).isdisjoint(frame[key].iloc[test_rows])
    embedder = get_embedder()
    parts = embed_frame(DetectorStack(embedder), frame)
    heads = fit_heads(frame.iloc[train_rows], take(parts, train_rows), model=embedder.model_name, group_by=by)
    held = frame.iloc[test_rows]
    return held, predict_frame(DetectorStack(embedder, head=heads), held, take(parts, test_rows)), heads, len(train_rows)


def report(record_property: Any, event: str, figures: dict[str, Any]) -> None:
    """Attach the figures to the test's JUnit record and log them."""
    for key, value in figures.items():
        record_property(key, value)
    log.info(event, **figures)
