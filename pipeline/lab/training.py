"""Fitting heads on a labelled frame and scoring a frame with the stack (used by the CLI and the bench)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import structlog

from pipeline.detectors.head import RESPONSE_ONLY_FEATURES, TASK_FEATURES, HeadSet, LinearHead, fit_head
from pipeline.detectors.refusal import substring_refusal
from pipeline.detectors.stack import DetectorStack
from pipeline.detectors.views import Views
from pipeline.lab.evaluation import TASKS, baseline_columns, binary_metrics, compared, groups_of, truth_of

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


HEAD_LABELS = {"refusal": "refusal", "harmful_compliance": "harmful", "prompt_harm": "prompt_harm"}


def fit_heads(
    frame: pd.DataFrame,
    parts: dict[str, np.ndarray],
    *,
    model: str,
    group_by: str,
    provenance: dict[str, Any] | None = None,
    tasks: tuple[str, ...] = tuple(HEAD_LABELS),
) -> HeadSet:
    """Fit each head on the rows that carry its label: refusal (3 classes), harmful compliance, prompt harm.

    Files mix: JailbreakBench rows carry no refusal label, so with an XSTest file beside them
    the refusal head is fitted on the XSTest rows alone. What was fitted on how many rows of
    which `source`, and what could not be fitted and why, goes into the provenance under
    `heads_fitted` and `heads_not_fitted`. When every prompt of a head's rows is known to be
    harmful (JailbreakBench), the harmful-compliance head reads the response only
    (`RESPONSE_ONLY_FEATURES`).
    """
    groups = groups_of(frame, group_by)
    sources = frame["source"] if "source" in frame else pd.Series("data", index=frame.index)
    heads: dict[str, LinearHead] = {}
    fitted: dict[str, dict[str, int]] = {}
    not_fitted: dict[str, str] = {}
    for task in tasks:
        column = HEAD_LABELS[task]
        rows = frame[column].notna().to_numpy()
        y = frame.loc[rows, column]
        y = (y if task == "refusal" else y.astype(int)).astype(str).tolist()
        if not rows.any():
            not_fitted[task] = f"no row carries a {column} label"
            continue
        if len(set(y)) < 2:
            not_fitted[task] = f"its {int(rows.sum())} labelled rows hold one class only ({y[0]})"
            continue
        all_harmful = frame.loc[rows, "prompt_harm"].notna().all() and set(frame.loc[rows, "prompt_harm"].astype(int)) == {1}
        features = RESPONSE_ONLY_FEATURES if task == "harmful_compliance" and all_harmful else TASK_FEATURES[task]
        heads[task] = fit_head(task, np.hstack([parts[f][rows] for f in features]), y, groups[rows], features=features)
        fitted[task] = {str(k): int(v) for k, v in sources[rows].value_counts().sort_index().items()}
    if not heads:
        raise ValueError("the data's labels define no task with two classes: " + "; ".join(f"{t}: {why}" for t, why in not_fitted.items()))
    return HeadSet(heads=heads, model=model, provenance={**(provenance or {}), "heads_fitted": fitted, "heads_not_fitted": not_fitted})


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
            "attack_score": [s.attack_score for s in scored],
            "pred:refusal": (refusal >= stack.refusal.threshold).astype(int),
            "pred:harmful_compliance": (harmful >= stack.policy.threshold).astype(int),
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
