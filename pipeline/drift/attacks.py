"""What attacks look like, in embedding space: the targeted side of drift detection.

An `AttackProfile` holds labelled exemplar vectors (the detectors' built-in jailbreak and
injection families and policy hazards, plus benign contrasts) and, optionally, a fitted
head (a small MLP or a logistic layer). It scores embeddings ("how attack-like is this
row?"), flags rows above a threshold, and names each row's nearest exemplar group for
explanations.

A head is fitted on attack and benign texts that must stay disjoint from anything used to
evaluate it; `AttackHead.sources` records what it was fitted on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog
from scipy.special import logit

log = structlog.get_logger(__name__)

# Cosine to the nearest built-in attack exemplar above which a row counts as attack-like
# when no fitted head is given (the exemplars are short paraphrases, so matches are loose).
BUILTIN_THRESHOLD = 0.55
# A row's weight in the targeted test is its likelihood ratio against a row at the threshold
# (head odds / threshold odds), capped so that no single row of an overconfident head can
# carry the test. Chosen on held-out quarters of the fit split only (never the evaluation
# windows): power rose with the cap up to 32 and was flat from there to 1e5; 64 sits on the flat.
LR_CAP = 64.0
BENIGN = "benign"


@dataclass(frozen=True)
class AttackHead:
    """A small classifier over embeddings: P(attack), its threshold and its measured rates.

    `layers` are (weights, bias) pairs applied in turn, ReLU between them and a logistic
    output after the last; a single layer is a plain logistic head.
    """

    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    threshold: float
    tpr: float  # measured on held-out attack texts at `threshold`
    fpr: float  # measured on held-out benign texts at `threshold`
    sources: dict = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """The weights (as saved) and the threshold, hashed: what a calibration is valid for."""
        h = hashlib.sha256(json.dumps(self.threshold).encode())
        for w, b in self.layers:
            h.update(np.asarray(w, np.float32).tobytes() + np.asarray(b, np.float32).tobytes())
        return h.hexdigest()[:12]

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        h = np.asarray(embeddings, dtype=np.float64)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        z = h.reshape(len(h))
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def save(self, path: Path) -> None:
        """Write the head as .npz (w0, b0, w1, b1 ... as float32) with its metadata as JSON inside."""
        meta = {"threshold": self.threshold, "tpr": self.tpr, "fpr": self.fpr, "sources": self.sources}
        arrays = {f"{kind}{i}": np.asarray(a, np.float32) for i, layer in enumerate(self.layers) for kind, a in zip("wb", layer, strict=True)}
        with Path(path).open("wb") as f:
            np.savez_compressed(f, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)

    @classmethod
    def load(cls, path: Path) -> AttackHead:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            depth = sum(1 for k in data.files if k.startswith("w"))
            layers = tuple((np.asarray(data[f"w{i}"], np.float64), np.asarray(data[f"b{i}"], np.float64)) for i in range(depth))
        return cls(layers, float(meta["threshold"]), float(meta["tpr"]), float(meta["fpr"]), meta.get("sources", {}))


def fit_head(
    attacks: np.ndarray,
    benign: np.ndarray,
    *,
    hidden: tuple[int, ...] = (256,),
    target_fpr: float = 0.01,
    seed: int = 0,
    sources: dict | None = None,
) -> AttackHead:
    """Fit a head on attack vs benign embeddings: an MLP with `hidden` ReLU layers, or logistic if ().

    Attacks come in unlike shapes (long role-play wrappers, short direct requests), which one
    hyperplane separates from benign traffic poorly; a hidden layer catches both. A quarter of
    each set is held out: the threshold is the benign held-out quantile that gives
    `target_fpr`, and the head's tpr/fpr are measured there, not on the fitted rows.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x = np.vstack([attacks, benign]).astype(np.float64)
    y = np.r_[np.ones(len(attacks)), np.zeros(len(benign))]
    x_fit, x_val, y_fit, y_val = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    if hidden:
        mlp = MLPClassifier(hidden_layer_sizes=hidden, alpha=1e-3, max_iter=300, early_stopping=True, random_state=seed)
        mlp.fit(x_fit, y_fit)
        layers = tuple((w.copy(), b.copy()) for w, b in zip(mlp.coefs_, mlp.intercepts_, strict=True))
    else:
        lr = LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced").fit(x_fit, y_fit)
        layers = ((lr.coef_.T.copy(), lr.intercept_.copy()),)
    val_scores = AttackHead(layers, 0.5, 0.0, 0.0).score(x_val)
    threshold = float(np.quantile(val_scores[y_val == 0], 1.0 - target_fpr))
    tpr = float(np.mean(val_scores[y_val == 1] >= threshold))
    fpr = float(np.mean(val_scores[y_val == 0] >= threshold))
    log.info("drift.head_fitted", n_attacks=len(attacks), n_benign=len(benign), hidden=list(hidden), threshold=threshold, tpr=tpr, fpr=fpr)
    return AttackHead(layers, threshold, tpr, fpr, dict(sources or {}))


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

    def weights(self, scores: np.ndarray) -> np.ndarray:
        """How much each scored row counts as evidence of attacks, from 0 to `LR_CAP`.

        With a head, the row's likelihood ratio relative to a row at the threshold: its odds
        over the threshold's odds (the training prior cancels), capped at `LR_CAP`. A row at
        the threshold weighs 1, a clear benign row almost 0, and rows just under the threshold
        still count a little, which a 0/1 flag throws away. The built-in exemplar score is no
        probability: there a row weighs 1 when flagged, else 0.
        """
        s = np.asarray(scores, dtype=np.float64)
        if self.head is None:
            return (s >= self.threshold).astype(np.float64)
        # logit(0) = -inf weighs 0; logit(1) = inf hits the cap.
        return np.exp(np.minimum(logit(s) - logit(self.threshold), np.log(LR_CAP)))

    def nearest(self, embeddings: np.ndarray, *, attacks_only: bool = False) -> np.ndarray:
        """The nearest exemplar group of each row (`jailbreak:persona_roleplay`, `policy:hate`, `benign` ...)."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if len(emb) == 0:
            return np.asarray([], dtype=str)
        vecs, groups = (self.vectors[self._attack_rows], self.groups[self._attack_rows]) if attacks_only else (self.vectors, self.groups)
        return groups[(emb @ vecs.T).argmax(axis=1)]
