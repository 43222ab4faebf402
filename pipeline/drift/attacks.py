"""What attacks look like, in embedding space: the targeted side of drift detection.

An `AttackProfile` holds labelled exemplar vectors (the detectors' built-in jailbreak and
injection families and policy hazards, plus benign contrasts) and, optionally, a fitted
logistic head. It scores embeddings ("how attack-like is this row?"), flags rows above a
threshold, and names each row's nearest exemplar group for explanations.

A head is fitted on attack and benign texts that must stay disjoint from anything used to
evaluate it; `AttackHead.sources` records what it was fitted on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

log = structlog.get_logger(__name__)

# Cosine to the nearest built-in attack exemplar above which a row counts as attack-like
# when no fitted head is given (the exemplars are short paraphrases, so matches are loose).
BUILTIN_THRESHOLD = 0.55
BENIGN = "benign"


@dataclass(frozen=True)
class AttackHead:
    """A logistic head over embeddings: P(attack), its threshold and its measured rates."""

    coef: np.ndarray
    intercept: float
    threshold: float
    tpr: float  # measured on held-out attack texts at `threshold`
    fpr: float  # measured on held-out benign texts at `threshold`
    sources: dict = field(default_factory=dict)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        z = np.asarray(embeddings, dtype=np.float64) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def save(self, path: Path) -> None:
        """Write the head as .npz (weights) with its metadata as JSON inside."""
        meta = {"intercept": self.intercept, "threshold": self.threshold, "tpr": self.tpr, "fpr": self.fpr, "sources": self.sources}
        np.savez(path, coef=self.coef, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: Path) -> AttackHead:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return cls(np.asarray(data["coef"], dtype=np.float64), float(meta["intercept"]), float(meta["threshold"]),
                       float(meta["tpr"]), float(meta["fpr"]), meta.get("sources", {}))  # fmt: skip


def fit_head(
    attacks: np.ndarray, benign: np.ndarray, *, target_fpr: float = 0.01, seed: int = 0, sources: dict | None = None
) -> AttackHead:
    """Fit a logistic head on attack vs benign embeddings.

    A quarter of each set is held out: the threshold is the benign held-out quantile that
    gives `target_fpr`, and the head's tpr/fpr are measured there, not on the fitted rows.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x = np.vstack([attacks, benign]).astype(np.float64)
    y = np.r_[np.ones(len(attacks)), np.zeros(len(benign))]
    x_fit, x_val, y_fit, y_val = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    model = LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced").fit(x_fit, y_fit)
    head = AttackHead(model.coef_[0].copy(), float(model.intercept_[0]), 0.5, 0.0, 0.0, dict(sources or {}))
    val_scores = head.score(x_val)
    threshold = float(np.quantile(val_scores[y_val == 0], 1.0 - target_fpr))
    tpr = float(np.mean(val_scores[y_val == 1] >= threshold))
    fpr = float(np.mean(val_scores[y_val == 0] >= threshold))
    log.info("drift.head_fitted", n_attacks=len(attacks), n_benign=len(benign), threshold=threshold, tpr=tpr, fpr=fpr)
    return AttackHead(head.coef, head.intercept, threshold, tpr, fpr, head.sources)


class AttackProfile:
    """Scores embeddings for attack-likeness and names their nearest exemplar group."""

    def __init__(self, vectors: np.ndarray, groups: list[str], head: AttackHead | None = None) -> None:
        if len(vectors) != len(groups):
            raise ValueError("one group label per exemplar vector")
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.groups = np.asarray(groups)
        self.head = head
        self._attack_rows = np.array([not g.startswith(BENIGN) and not g.startswith("policy:") for g in groups])

    @classmethod
    def builtin(cls, embedder, head: AttackHead | None = None) -> AttackProfile:
        """The profile from the detectors' own exemplars (jailbreak, injection, policy, benign)."""
        from pipeline.detectors.catalog import load_exemplars

        texts: list[str] = []
        groups: list[str] = []
        for kind, families in load_exemplars("attacks").items():
            for family, examples in families.items():
                texts += examples
                groups += [f"{kind}:{family}"] * len(examples)
        policy = load_exemplars("policy")
        for category, examples in policy["categories"].items():
            texts += examples
            groups += [f"policy:{category}"] * len(examples)
        texts += policy.get("benign", [])
        groups += [BENIGN] * len(policy.get("benign", []))
        return cls(embedder.encode(texts), groups, head)

    @property
    def threshold(self) -> float:
        return self.head.threshold if self.head else BUILTIN_THRESHOLD

    @property
    def youden(self) -> float:
        """tpr - fpr of the head (0 when unknown): how much of a true share change shows up flagged."""
        return max(self.head.tpr - self.head.fpr, 0.0) if self.head else 0.0

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Attack-likeness per row: the head's probability, or the cosine to the nearest attack exemplar."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if self.head is not None:
            return self.head.score(emb)
        if len(emb) == 0:
            return np.zeros(0)
        return (emb @ self.vectors[self._attack_rows].T).max(axis=1).astype(np.float64)

    def nearest(self, embeddings: np.ndarray, *, attacks_only: bool = False) -> np.ndarray:
        """The nearest exemplar group of each row (`jailbreak:persona_roleplay`, `policy:hate`, `benign` ...)."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if len(emb) == 0:
            return np.asarray([], dtype=str)
        vecs, groups = (self.vectors[self._attack_rows], self.groups[self._attack_rows]) if attacks_only else (self.vectors, self.groups)
        return groups[(emb @ vecs.T).argmax(axis=1)]
