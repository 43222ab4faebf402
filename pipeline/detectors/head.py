"""Fitted detector heads: small linear classifiers on embedding views, saved as a versioned npz.

A head turns the views of a (prompt, response) pair (see `views`) plus a few rule signals into a
calibrated probability. The default detectors need no head; `safemon detectors fit` writes one
from any labelled file and `SAFEMON_DETECTOR_HEAD` points the pipeline at it.

The artifact is one `.npz` (loaded with allow_pickle=False): per head its coefficients,
intercepts, classes and threshold, and a JSON `meta` string with the format version, the
embedding model, the views' sizes and the training provenance (data hashes, split, row counts).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from pipeline.detectors import views as view_sizes

log = structlog.get_logger(__name__)

ARTIFACT_FORMAT = "safemon.detector_head"
ARTIFACT_VERSION = 3  # 2: a ninth rule signal (refusal_substring); 3: no opening view, no margin_opening signal
# What each task's head reads. Refusal deliberately ignores the prompt: a prompt-only classifier
# already scores ~0.86 on XSTest, and the head must judge the response, not guess from the request.
TASK_FEATURES: dict[str, tuple[str, ...]] = {
    "refusal": ("gist", "signals"),
    "harmful_compliance": ("gist", "prompt", "signals"),
    "prompt_harm": ("prompt",),
}
# Harmful compliance fitted on data whose prompts are all harmful (JailbreakBench): the prompt
# carries no label information there, only the goal's identity, which does not transfer to
# unseen goals (cross-fitted by goal, when an opening view was still embedded: 0.797 with the
# prompt and the opening, 0.824 without them and with the refusal_substring signal).
RESPONSE_ONLY_FEATURES = ("gist", "signals")
# The classes whose probabilities add up to each task's score.
TASK_POSITIVE: dict[str, tuple[str, ...]] = {
    "refusal": ("full", "partial"),
    "harmful_compliance": ("1",),
    "prompt_harm": ("1",),
}
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)


class HeadError(ValueError):
    """A head artifact is unreadable, of another format version, or built for another model."""


def assemble(features: Sequence[str], parts: Mapping[str, np.ndarray]) -> np.ndarray:
    """Concatenate the named feature blocks (each (n, d)) into one float64 matrix."""
    missing = [f for f in features if parts.get(f) is None]
    if missing:
        raise ValueError(f"features {missing} are needed but were not computed")
    return np.hstack([np.asarray(parts[f], dtype=np.float64) for f in features])


@dataclass(frozen=True)
class LinearHead:
    """One fitted multinomial/binary logistic head: probabilities of `classes` from features."""

    task: str
    features: tuple[str, ...]
    classes: tuple[str, ...]
    coef: np.ndarray  # (1, d) for two classes, else (len(classes), d)
    intercept: np.ndarray
    threshold: float = 0.5

    def proba(self, x: np.ndarray) -> np.ndarray:
        """(n, len(classes)) class probabilities."""
        logits = x @ self.coef.T + self.intercept
        if len(self.classes) == 2:
            p = 1.0 / (1.0 + np.exp(-np.clip(logits[:, 0], -50, 50)))
            return np.stack([1.0 - p, p], axis=1)
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Probability of the task's positive classes, in [0, 1]."""
        positive = [i for i, c in enumerate(self.classes) if c in TASK_POSITIVE.get(self.task, ("1",))]
        return np.clip(self.proba(x)[:, positive].sum(axis=1), 0.0, 1.0)


@dataclass(frozen=True)
class HeadSet:
    """The heads of one artifact, the embedding model they were fitted on, and their provenance."""

    heads: dict[str, LinearHead]
    model: str
    provenance: dict[str, Any] = field(default_factory=dict)

    def get(self, task: str) -> LinearHead | None:
        return self.heads.get(task)

    @property
    def digest(self) -> str:
        """What decides this set's scores (model, heads, thresholds, weights as saved), hashed:
        the same for a fitted set and the artifact it was saved to."""
        h = hashlib.sha256(self.model.encode())
        for task in sorted(self.heads):
            head = self.heads[task]
            h.update(json.dumps([task, list(head.features), list(head.classes), head.threshold]).encode())
            h.update(np.asarray(head.coef, dtype=np.float32).tobytes() + np.asarray(head.intercept, dtype=np.float32).tobytes())
        return h.hexdigest()[:12]

    def save(self, path: Path) -> Path:
        """Write the artifact (npz); returns the path written."""
        meta = {
            "format": ARTIFACT_FORMAT,
            "version": ARTIFACT_VERSION,
            "model": self.model,
            "views": view_sizes.sizes(),
            "heads": {t: {"features": list(h.features), "classes": list(h.classes), "threshold": h.threshold} for t, h in self.heads.items()},
            "provenance": self.provenance,
        }
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta, sort_keys=True))}
        for task, h in self.heads.items():
            arrays[f"{task}.coef"] = h.coef.astype(np.float32)
            arrays[f"{task}.intercept"] = h.intercept.astype(np.float32)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: Path, expect_model: str | None = None) -> HeadSet:
        """Read an artifact, checking its format version and (when given) its embedding model."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {k: np.asarray(data[k], dtype=np.float64) for k in data.files if k != "meta"}
        except (OSError, KeyError, ValueError) as exc:
            raise HeadError(f"{path}: not a detector head artifact ({exc})") from None
        if meta.get("format") != ARTIFACT_FORMAT or meta.get("version") != ARTIFACT_VERSION:
            raise HeadError(f"{path}: format {meta.get('format')!r} v{meta.get('version')}; expected {ARTIFACT_FORMAT} v{ARTIFACT_VERSION}")
        if meta.get("views") != view_sizes.sizes():
            raise HeadError(f"{path}: fitted on views cut as {meta.get('views')}, but this version cuts them as {view_sizes.sizes()}; refit it")
        if expect_model is not None and meta["model"] != expect_model:
            raise HeadError(f"{path}: fitted on embeddings of {meta['model']!r}, but the embedder is {expect_model!r}")
        heads = {}
        for task, spec in meta["heads"].items():
            heads[task] = LinearHead(
                task=task,
                features=tuple(spec["features"]),
                classes=tuple(spec["classes"]),
                coef=arrays[f"{task}.coef"],
                intercept=arrays[f"{task}.intercept"],
                threshold=float(spec["threshold"]),
            )
        return cls(heads=heads, model=meta["model"], provenance=meta.get("provenance", {}))


def fit_head(
    task: str,
    x: np.ndarray,
    labels: Sequence[str],
    groups: Sequence[Any] | None = None,
    *,
    features: Sequence[str] | None = None,
    folds: int = 3,
    seed: int = 0,
) -> LinearHead:
    """Fit a logistic head, choosing its L2 strength by grouped cross-validated log-loss.

    Features are standardised for the fit and the scaling is folded back into the coefficients,
    so the stored head applies to raw features. Groups keep near-duplicate rows (one prompt, one
    goal) inside one inner fold, so the strength is chosen on unseen groups.
    """
    from threadpoolctl import threadpool_limits

    # Small dense problems: BLAS threads only contend with each other.
    with threadpool_limits(1), warnings.catch_warnings():
        # scikit-learn 1.9 announces attribute renames of LogisticRegressionCV; `C_` is read once.
        warnings.simplefilter("ignore", FutureWarning)
        return _fit(task, x, labels, groups, features=features, folds=folds, seed=seed)


def _fit(task: str, x: np.ndarray, labels: Sequence[str], groups: Sequence[Any] | None, *, features: Sequence[str] | None, folds: int, seed: int) -> LinearHead:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    y = np.asarray([str(v) for v in labels])
    classes = sorted(set(y.tolist()))
    if len(classes) < 2:
        raise ValueError(f"{task}: need at least two classes to fit, got {classes}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-8] = 1.0
    z = (x - mean) / scale
    min_class = min(int((y == c).sum()) for c in classes)
    k = min(folds, min_class, len(set(groups)) if groups is not None else folds)
    if k >= 2:
        if groups is not None:
            splits = list(GroupKFold(n_splits=k).split(z, y, np.asarray(groups)))
        else:
            splits = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(z, y))
        # The C path is warm-started within each fold, which keeps the search cheap.
        model = LogisticRegressionCV(Cs=list(C_GRID), cv=splits, scoring="neg_log_loss", max_iter=3000).fit(z, y)
        best_c = float(np.atleast_1d(model.C_)[0])
    else:  # too few rows of a class to cross-validate: the middle strength
        best_c = C_GRID[len(C_GRID) // 2]
        model = LogisticRegression(C=best_c, max_iter=3000).fit(z, y)
    coef = model.coef_ / scale
    intercept = model.intercept_ - (model.coef_ * (mean / scale)).sum(axis=1)
    log.info("head.fitted", task=task, n=len(y), classes=classes, C=best_c, folds=k)
    return LinearHead(
        task=task,
        features=tuple(features or TASK_FEATURES[task]),
        classes=tuple(str(c) for c in model.classes_),
        coef=coef,
        intercept=intercept,
    )


def provenance_stamp(**fields: Any) -> dict[str, Any]:
    """Training provenance with the fit time and library versions filled in."""
    import sklearn

    return {"created_at": datetime.now(UTC).isoformat(timespec="seconds"), "sklearn": sklearn.__version__, **fields}
