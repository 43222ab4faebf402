"""What moved between two windows: groups whose share grew, nearest attack families, sample ids."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.drift.attacks import AttackProfile

TOP = 5


@dataclass(frozen=True)
class GroupShift:
    """A group (exemplar group or policy category) and its count and share in each window."""

    group: str
    n_reference: int
    n_current: int
    share_reference: float
    share_current: float


@dataclass(frozen=True)
class Explanation:
    """The parts of a drift a person looks at first."""

    groups: tuple[GroupShift, ...]  # nearest exemplar groups whose share grew
    categories: tuple[GroupShift, ...]  # flagged policy categories whose share grew
    families: tuple[tuple[str, int], ...]  # nearest attack families of the shifted rows, with counts
    sample_ids: tuple[str, ...]  # a few current samples from the shifted mass

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        parts = []
        if self.groups:
            parts.append("grew: " + ", ".join(f"{g.group} {g.n_reference}->{g.n_current}" for g in self.groups[:3]))
        if self.categories:
            parts.append("flagged: " + ", ".join(f"{g.group} {g.n_reference}->{g.n_current}" for g in self.categories[:3]))
        if self.families:
            parts.append("nearest attacks: " + ", ".join(f"{f} ({n})" for f, n in self.families[:3]))
        return "; ".join(parts)


def grown(reference: Sequence[str], current: Sequence[str], n_reference: int, n_current: int, top: int = TOP) -> tuple[GroupShift, ...]:
    """Groups whose share of their window rose, largest rise first."""
    ref, cur = Counter(reference), Counter(current)
    shifts = [
        GroupShift(g, ref[g], cur[g], ref[g] / max(n_reference, 1), cur[g] / max(n_current, 1))
        for g in cur
        if cur[g] / max(n_current, 1) > ref[g] / max(n_reference, 1)
    ]
    shifts.sort(key=lambda s: (s.share_current - s.share_reference, s.group), reverse=True)
    return tuple(shifts[:top])


def explain(
    reference: np.ndarray,
    current: np.ndarray,
    profile: AttackProfile,
    *,
    current_ids: Sequence[str] | None = None,
    witness: np.ndarray | None = None,
    reference_categories: Sequence[Sequence[str]] = (),
    current_categories: Sequence[Sequence[str]] = (),
    top: int = TOP,
) -> Explanation:
    """Explain a drift: the shifted mass is the current rows flagged as attack-like, most
    attack-like first; when none are flagged, the rows the MMD witness puts furthest from the
    reference."""
    groups = grown(list(profile.nearest(reference)), list(profile.nearest(current)), len(reference), len(current), top)
    categories = grown([c for cs in reference_categories for c in cs], [c for cs in current_categories for c in cs], len(reference), len(current), top)
    scores = profile.score(current)
    flagged = np.flatnonzero(scores >= profile.threshold)
    if len(flagged):
        order = flagged[np.argsort(-scores[flagged], kind="stable")]
    elif witness is not None and len(witness) == len(current):
        order = np.argsort(-witness, kind="stable")[: max(top, len(current) // 20)]
    else:
        order = np.array([], dtype=int)
    families = Counter(profile.nearest(current[order], attacks_only=True)) if len(order) else Counter()
    ids = tuple(str(current_ids[i]) for i in order[:top]) if current_ids is not None else ()
    return Explanation(groups, categories, tuple(families.most_common(top)), ids)
