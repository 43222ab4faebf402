"""Registered two-sample drift tests over embeddings: MMD, a classifier test, attack share, centroid.

Every method takes a reference and a current set of embeddings (rows) and returns a
`DriftResult`: a statistic, a p-value that is valid under "no drift" (or NaN for an
effect-size-only method), an effect size on a scale where `drift_min_effect` means
something, and whether the method alone calls it drift at its alpha. Seeds are fixed, so the
same inputs give the same result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import structlog

from pipeline.registry import Registry

log = structlog.get_logger(__name__)


class DriftInputError(ValueError):
    """The windows cannot be compared (empty, wrong shape, mismatched dimensions)."""


@dataclass(frozen=True)
class DriftResult:
    """One method's verdict on one (reference, current) pair."""

    method: str
    statistic: float
    p_value: float  # NaN for methods that only report an effect size
    effect_size: float
    drifted: bool
    n_reference: int
    n_current: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def can_alert(self) -> bool:
        return not math.isnan(self.p_value)


@dataclass(frozen=True)
class DriftContext:
    """What a method may need besides the two windows."""

    alpha: float = 0.01
    permutations: int = 1000
    seed: int = 0
    attacks: Any = None  # an AttackProfile, for the targeted attack_share test
    reference_scores: np.ndarray | None = None  # precomputed attack scores, else derived from embeddings
    current_scores: np.ndarray | None = None


class DriftMethod(Protocol):
    def __call__(self, reference: np.ndarray, current: np.ndarray, ctx: DriftContext) -> DriftResult: ...


DRIFT_METHODS: Registry[DriftMethod] = Registry("drift")


def clean_embeddings(vectors: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A float32 (n, d) array of the usable rows, and the mask of rows kept.

    Rows with NaN/inf or a zero norm carry no direction (a failed embedding, an empty text):
    they are dropped here rather than allowed to poison a kernel or a centroid.
    """
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 0)
    if arr.ndim != 2:
        raise DriftInputError(f"{name} embeddings must be a 2-D array (rows x dims), got shape {arr.shape}")
    finite = np.isfinite(arr).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(arr), arr, 0.0), axis=1)
    keep = finite & (norms > 1e-12)
    return arr[keep], keep


def check_pair(reference: np.ndarray, current: np.ndarray, min_samples: int = 2) -> None:
    """Raise DriftInputError unless both windows are 2-D, of equal width, and large enough."""
    for name, arr in (("reference", reference), ("current", current)):
        if arr.ndim != 2:
            raise DriftInputError(f"{name} embeddings must be a 2-D array, got shape {arr.shape}")
        if arr.shape[0] < min_samples:
            raise DriftInputError(f"{name} window has {arr.shape[0]} usable embeddings; at least {min_samples} are needed")
        if not np.isfinite(arr).all():
            raise DriftInputError(f"{name} embeddings contain NaN or infinite values")
    if reference.shape[1] != current.shape[1]:
        raise DriftInputError(f"dimension mismatch: reference has {reference.shape[1]}, current has {current.shape[1]}")


# --- MMD ----------------------------------------------------------------------------------

BANDWIDTH_POINTS = 1000


def median_gamma(pooled: np.ndarray, seed: int = 0) -> float:
    """RBF `gamma` from the median heuristic: 1 / median squared distance of the pooled sample.

    Computed on the pooled data only (a symmetric function of it), so the permutation test
    stays exact; a subsample of at most BANDWIDTH_POINTS keeps it cheap.
    """
    rng = np.random.default_rng(seed)
    pts = pooled if len(pooled) <= BANDWIDTH_POINTS else pooled[rng.choice(len(pooled), BANDWIDTH_POINTS, replace=False)]
    sq = np.einsum("ij,ij->i", pts, pts)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (pts @ pts.T)
    med = float(np.median(d2[np.triu_indices(len(pts), 1)]))
    return 1.0 / med if med > 1e-12 else 1.0


def rbf_kernel(pooled: np.ndarray, gamma: float) -> np.ndarray:
    """The (N, N) float32 RBF kernel matrix of the pooled sample, with a zero diagonal.

    The diagonal is zeroed because the unbiased MMD² leaves out i == j terms.
    """
    sq = np.einsum("ij,ij->i", pooled, pooled)
    k = pooled @ pooled.T  # one GEMM; then the kernel is built in place to keep memory at N² floats
    k *= 2.0
    k -= sq[:, None]
    k -= sq[None, :]
    np.minimum(k, 0.0, out=k)
    k *= gamma
    np.exp(k, out=k)
    np.fill_diagonal(k, 0.0)
    return k


def mmd2_unbiased(kernel: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unbiased MMD² for each column of `labels` (N, B) of 0/1 (1 = reference), in one product.

    With a = the indicator of one group and K0 the kernel without its diagonal:
    aᵀK0a, aᵀK0(1-a) and (1-a)ᵀK0(1-a) all follow from K0·A and the row sums of K0.
    """
    a = labels.astype(np.float32, copy=False)
    n = a.sum(axis=0).astype(np.float64)
    m = a.shape[0] - n
    ka = kernel @ a
    rows = kernel.sum(axis=1, dtype=np.float64)
    xx = np.einsum("ij,ij->j", a, ka, dtype=np.float64)
    xr = a.T.astype(np.float64) @ rows
    total = rows.sum()
    xy = xr - xx
    yy = total - 2.0 * xr + xx
    return xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (n * m)


def permuted_labels(labels: np.ndarray, permutations: int, seed: int) -> np.ndarray:
    """(permutations, n): each row a seeded shuffle of `labels`, for testing every permutation in one product."""
    return np.random.default_rng(seed).permuted(np.tile(labels, (permutations, 1)), axis=1)


def mmd_permutation_test(reference: np.ndarray, current: np.ndarray, permutations: int = 1000, seed: int = 0) -> tuple[float, float, float, np.ndarray]:
    """Unbiased MMD² with an RBF kernel and its permutation p-value.

    Returns (mmd², p-value, gamma, witness of the current rows). The kernel is computed once;
    all permutations go through a single matrix product.
    """
    pooled = np.vstack([reference, current]).astype(np.float32, copy=False)
    n = len(reference)
    gamma = median_gamma(pooled, seed)
    kernel = rbf_kernel(pooled, gamma)
    observed = np.zeros(len(pooled), dtype=np.float32)
    observed[:n] = 1.0
    shuffled = permuted_labels(observed, permutations, seed)
    stats = mmd2_unbiased(kernel, np.column_stack([observed, shuffled.T]))
    # The observed split counts as one of the permutations: an exact, never-zero p-value.
    p = float((1 + np.sum(stats[1:] >= stats[0] - 1e-12)) / (permutations + 1))
    # Witness: how much closer each current row sits to the current than to the reference window.
    cur = kernel[n:]
    witness = cur[:, n:].sum(axis=1) / max(len(current) - 1, 1) - cur[:, :n].mean(axis=1)
    return float(stats[0]), p, gamma, witness


@DRIFT_METHODS.register("mmd")
def mmd(reference: np.ndarray, current: np.ndarray, ctx: DriftContext) -> DriftResult:
    """Untargeted: unbiased MMD² (RBF, median-heuristic bandwidth), permutation-tested.

    Effect size: MMD (the square root of MMD², 0 when negative), a distance between the two
    windows' kernel mean embeddings.
    """
    check_pair(reference, current)
    stat, p, gamma, witness = mmd_permutation_test(reference, current, ctx.permutations, ctx.seed)
    effect = math.sqrt(max(stat, 0.0))
    return DriftResult(
        "mmd", stat, p, effect, p < ctx.alpha, len(reference), len(current), {"gamma": gamma, "permutations": ctx.permutations, "witness": witness}
    )


# --- Classifier two-sample test -----------------------------------------------------------

C2ST_FOLDS = 2


@DRIFT_METHODS.register("c2st")
def c2st(reference: np.ndarray, current: np.ndarray, ctx: DriftContext) -> DriftResult:
    """Untargeted: can a logistic regression tell current rows from reference rows?

    Cross-fitted over C2ST_FOLDS stratified folds: each fold is scored by a model that never
    saw it, so under no drift its held-out scores are independent of its labels and the
    one-sided Mann-Whitney test of "current scores higher" is exact. The folds' p-values are
    combined by Bonferroni (valid whatever their dependence). Statistic: mean held-out AUC;
    effect size: AUC - 0.5.
    """
    from scipy.stats import mannwhitneyu
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    check_pair(reference, current, min_samples=C2ST_FOLDS * 2)
    x = np.vstack([reference, current]).astype(np.float64)
    y = np.r_[np.zeros(len(reference)), np.ones(len(current))]
    aucs, ps = [], []
    folds = StratifiedKFold(n_splits=C2ST_FOLDS, shuffle=True, random_state=ctx.seed)
    for train, test in folds.split(x, y):
        model = LogisticRegression(C=1.0, max_iter=300, class_weight="balanced")
        model.fit(x[train], y[train])
        score = model.decision_function(x[test])
        yt = y[test]
        aucs.append(roc_auc_score(yt, score))
        ps.append(mannwhitneyu(score[yt == 1], score[yt == 0], alternative="greater").pvalue)
    auc = float(np.mean(aucs))
    p = float(min(1.0, C2ST_FOLDS * min(ps)))
    return DriftResult("c2st", auc, p, auc - 0.5, p < ctx.alpha, len(reference), len(current), {"fold_auc": [float(a) for a in aucs]})


# --- Targeted: share of samples near known attacks ----------------------------------------


def weight_permutation_test(reference: np.ndarray, current: np.ndarray, permutations: int, seed: int) -> float:
    """One-sided permutation p-value for "the current rows weigh more in total".

    Every permutation relabels the pooled rows; they all go through one matrix product.
    """
    pooled = np.concatenate([reference, current])
    labels = np.zeros(len(pooled))
    labels[len(reference) :] = 1.0
    shuffled = permuted_labels(labels, permutations, seed)
    observed = float(labels @ pooled)
    null = shuffled @ pooled
    # Ties count as "at least as large": sums of the same floats in another order differ in the last bits.
    at_least = (null >= observed) | np.isclose(null, observed)
    # The observed labelling counts as one of the permutations: an exact, never-zero p-value.
    return float((1 + np.sum(at_least)) / (permutations + 1))


@DRIFT_METHODS.register("attack_share")
def attack_share(reference: np.ndarray, current: np.ndarray, ctx: DriftContext) -> DriftResult:
    """Targeted: did the share of samples that look like known attacks grow?

    Each row is scored against the attack profile (a fitted head, or the built-in attack
    exemplars). With a head, the p-value is a permutation test on the windows' total attack
    weight (`AttackProfile.weights`: likelihood ratios, capped), valid whatever the traffic's
    base rate; with the built-in exemplars, the exact one-sided test of the flagged shares.
    Statistic: the rise in the share of rows flagged above the threshold. Effect size: that
    rise divided by the profile's (tpr - fpr) when it knows them (Rogan-Gladen), so that it
    estimates the rise in the true attack share.
    """
    from pipeline.stats.proportions import increase_p_value

    check_pair(reference, current)
    if ctx.attacks is None:
        raise DriftInputError("attack_share needs an attack profile (DriftContext.attacks)")
    ref_scores = ctx.reference_scores if ctx.reference_scores is not None else ctx.attacks.score(reference)
    cur_scores = ctx.current_scores if ctx.current_scores is not None else ctx.attacks.score(current)
    k_ref = int(np.sum(ref_scores >= ctx.attacks.threshold))
    k_cur = int(np.sum(cur_scores >= ctx.attacks.threshold))
    share_ref, share_cur = k_ref / len(reference), k_cur / len(current)
    w_ref, w_cur = ctx.attacks.weights(ref_scores), ctx.attacks.weights(cur_scores)
    if ctx.attacks.head is None:
        # 0/1 weights: permuting their sum is Fisher's test; the exact p-value has no 1/(P+1) floor.
        p = increase_p_value(k_ref, len(reference), k_cur, len(current))
    else:
        p = weight_permutation_test(w_ref, w_cur, ctx.permutations, ctx.seed)
    rise = share_cur - share_ref
    effect = rise / ctx.attacks.youden if ctx.attacks.youden > 0 else rise
    return DriftResult(
        "attack_share",
        rise,
        p,
        effect,
        p < ctx.alpha,
        len(reference),
        len(current),
        {
            "flagged_reference": k_ref,
            "flagged_current": k_cur,
            "share_reference": share_ref,
            "share_current": share_cur,
            "threshold": ctx.attacks.threshold,
            "weight_reference": float(w_ref.mean()),
            "weight_current": float(w_cur.mean()),
            "permutations": ctx.permutations,
        },
    )


# --- Effect size only ---------------------------------------------------------------------


@DRIFT_METHODS.register("centroid")
def centroid(reference: np.ndarray, current: np.ndarray, ctx: DriftContext) -> DriftResult:
    """Cosine distance between the windows' mean embeddings: an effect size, never an alarm."""
    check_pair(reference, current, min_samples=1)
    a, b = reference.mean(axis=0, dtype=np.float64), current.mean(axis=0, dtype=np.float64)
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    dist = 1.0 - float(a @ b) / denom if denom > 0 else 0.0
    return DriftResult("centroid", dist, math.nan, dist, False, len(reference), len(current))


# Methods whose cost grows fast with the rows (a kernel matrix over both windows, a fitted
# classifier) read at most `reference_cap` rows of the reference; the others read all of it:
# the targeted test's power is limited by how well the reference pins down the base rate.
CAPPED_REFERENCE = frozenset({"mmd", "c2st"})


def run_methods(names: list[str], reference: np.ndarray, current: np.ndarray, ctx: DriftContext, *, reference_cap: int | None = None) -> list[DriftResult]:
    """Run the named methods on one pair (unknown names raise KeyError listing the valid ones).

    With `reference_cap`, the `CAPPED_REFERENCE` methods read the reference's first rows only, so
    the reference must come in random order (the drift store returns rows in hash order).
    """
    chosen = [(n, DRIFT_METHODS.get(n)) for n in names]
    capped = reference if reference_cap is None else reference[:reference_cap]
    return [method(capped if n in CAPPED_REFERENCE else reference, current, ctx) for n, method in chosen]
