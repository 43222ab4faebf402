"""Fitting heads on a labelled frame and scoring a frame with the stack (used by the CLI and the bench)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import structlog

from pipeline.detectors.evaluation import TASKS, baseline_columns, binary_metrics, compared, groups_of, truth_of
from pipeline.detectors.head import RESPONSE_ONLY_FEATURES, TASK_FEATURES, HeadSet, LinearHead, fit_head
from pipeline.detectors.refusal import substring_refusal
from pipeline.detectors.stack import DetectorStack
from pipeline.detectors.views import Views

log = structlog.get_logger(__name__)


def embed_frame(stack: DetectorStack, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every feature block of a frame's rows: view embeddings (one encode call) and rule signals."""
    texts = frame["response"].tolist()
    parts = stack.embed(Views.of(texts, frame["prompt"].tolist()))
    parts["signals"] = stack.refusal.signals(texts, parts["gist"])
    return parts


def take(parts: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The feature blocks of a subset of rows."""
    return {k: v[rows] for k, v in parts.items()}


def fit_heads(
    frame: pd.DataFrame, parts: dict[str, np.ndarray], *, model: str, group_by: str, provenance: dict[str, Any] | None = None
) -> HeadSet:
    """Fit every head the frame's labels allow: refusal (3 classes), harmful compliance, prompt harm.

    When every prompt is known to be harmful (JailbreakBench), the harmful-compliance head reads
    the response only (`RESPONSE_ONLY_FEATURES`).
    """
    groups = groups_of(frame, group_by)
    heads: dict[str, LinearHead] = {}
    labels = {
        "refusal": None if frame["refusal"].isna().any() else frame["refusal"].astype(str).tolist(),
        "harmful_compliance": None if frame["harmful"].isna().any() else frame["harmful"].astype(int).astype(str).tolist(),
        "prompt_harm": None if frame["prompt_harm"].isna().any() else frame["prompt_harm"].astype(int).astype(str).tolist(),
    }
    all_harmful = labels["prompt_harm"] is not None and set(labels["prompt_harm"]) == {"1"}
    for task, y in labels.items():
        if y is None or len(set(y)) < 2:
            continue
        features = RESPONSE_ONLY_FEATURES if task == "harmful_compliance" and all_harmful else TASK_FEATURES[task]
        heads[task] = fit_head(task, np.hstack([parts[f] for f in features]), y, groups, features=features)
    if not heads:
        raise ValueError("the data's labels define no task with two classes")
    return HeadSet(heads=heads, model=model, provenance=provenance or {})


def predict_frame(stack: DetectorStack, frame: pd.DataFrame, parts: dict[str, np.ndarray]) -> pd.DataFrame:
    """The stack's scores and decisions for each row, as columns."""
    vecs = {k: parts[k] for k in ("gist", "prompt")}
    scored = stack.score_embedded(frame["response"].tolist(), vecs)
    refusal = np.array([s.refusal for s in scored])
    harmful = np.array([s.harmful_compliance for s in scored])
    over = np.array([s.over_refusal if s.over_refusal is not None else np.nan for s in scored])
    return pd.DataFrame(
        {
            "refusal_score": refusal,
            "refusal_kind": [s.refusal_kind for s in scored],
            "harmful_score": harmful,
            "over_score": over,
            "pred:refusal": (refusal >= stack.refusal.threshold).astype(int),
            "pred:harmful_compliance": (harmful >= 0.5).astype(int),
            "pred:over_refusal": (over >= 0.5).astype(int),
        },
        index=frame.index,
    )


def evaluate(frame: pd.DataFrame, predictions: pd.DataFrame, *, n_boot: int = 1000) -> dict[str, Any]:
    """Per task the labels define: the detector's metrics and every baseline's, on the same rows."""
    out: dict[str, Any] = {}
    for task in TASKS:
        truth = truth_of(frame, task)
        if truth is None or len(truth) == 0:
            continue
        detector = predictions[f"pred:{task}"].to_numpy()
        entry = {"detector": binary_metrics(truth, detector, n_boot=n_boot)}
        baselines = baseline_columns(frame, task)
        if task == "refusal":
            baselines = {"substring": substring_refusal(frame["response"].tolist()), **baselines}
        for name, verdicts in baselines.items():
            # A baseline is compared on the rows where it has a verdict; `missing` says how many it lacks.
            present = ~np.isnan(np.asarray(verdicts, dtype=float))
            if present.any():
                entry[name] = {**compared(truth[present], detector[present], verdicts[present].astype(int), n_boot), "missing": int((~present).sum())}
        out[task] = entry
    return out

