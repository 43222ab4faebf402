"""Attack similarity: how close is a USER text to known jailbreak or prompt-injection families?

The text is compared, whole and in overlapping windows (an injected instruction may sit in the
middle of a pasted document), with hand-written examples of each family in
`exemplars/attacks.yaml`. The score is the highest cosine similarity, clipped to [0, 1], with the
family it came from.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.detectors.catalog import DETECTORS, load_exemplars
from pipeline.detectors.embedder import Embedder

if TYPE_CHECKING:
    from pipeline.detectors.scorer import Exchange

WINDOW_CHARS = 240
MAX_WINDOWS = 24
_SENTENCE_END = re.compile(r"(?<=[.!?\n])\s+")


@dataclass(frozen=True)
class SimilarityMatch:
    """The nearest known attack family to a text, and how near it is (cosine, clipped to [0, 1])."""

    score: float
    family: str


def split_windows(text: str, size: int = WINDOW_CHARS, limit: int = MAX_WINDOWS) -> list[str]:
    """The whole text, plus sentence-aligned windows of about `size` characters when it is longer.

    Windows keep a single injected sentence from being diluted by the document around it; when a
    text would need more than `limit` windows, the windows grow so every part is still read.
    """
    if len(text) <= size:
        return [text]
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    while True:
        windows: list[str] = []
        current = ""
        for sentence in sentences:
            if current and len(current) + len(sentence) + 1 > size:
                windows.append(current)
                current = ""
            current = f"{current} {sentence}" if current else sentence
        if current:
            windows.append(current)
        if len(windows) <= limit:
            return [text] + windows
        size *= 2


class AttackSimilarity:
    """Matches user texts against one exemplar set (`jailbreak` or `injection`) of attack families.

    Under the detection contract it reads one text of each exchange (`reads`) and fills
    `<kind>_score` and `<kind>_family`.
    """

    kind = ""
    name = ""
    reads = ""

    def __init__(self, embedder: Embedder, head: object = None) -> None:
        self.embedder = embedder
        families: dict[str, list[str]] = load_exemplars("attacks")[self.kind]
        self._labels: list[str] = []
        texts: list[str] = []
        for family, examples in families.items():
            self._labels += [family] * len(examples)
            texts += examples
        self._vecs = embedder.encode(texts)
        self.families = sorted(families)

    def match(self, texts: Sequence[str]) -> list[SimilarityMatch]:
        """The nearest family and its similarity for each text, embedding all windows in one call."""
        pieces: list[str] = []
        bounds: list[int] = [0]  # text i owns pieces[bounds[i]:bounds[i + 1]]
        for text in texts:
            pieces += split_windows(text)
            bounds.append(len(pieces))
        if not pieces:
            return []
        sims = self.embedder.encode(pieces) @ self._vecs.T
        best_col = sims.argmax(axis=1)
        best_sim = sims[np.arange(len(pieces)), best_col]
        out: list[SimilarityMatch] = []
        for text, (start, end) in zip(texts, itertools.pairwise(bounds), strict=True):
            if not text.strip():
                out.append(SimilarityMatch(0.0, ""))
                continue
            r = start + int(best_sim[start:end].argmax())
            out.append(SimilarityMatch(float(np.clip(best_sim[r], 0.0, 1.0)), self._labels[best_col[r]]))
        return out

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Just the similarity scores of `texts`."""
        return np.array([m.score for m in self.match(texts)], dtype=np.float64)

    @property
    def fields(self) -> tuple[str, str]:
        return (f"{self.kind}_score", f"{self.kind}_family")

    def texts(self, exchanges: Sequence[Exchange]) -> list[str]:
        return [w for e in exchanges for w in split_windows(getattr(e, self.reads))]

    def detect(self, exchanges: Sequence[Exchange]) -> list[dict[str, object]]:
        score, family = self.fields
        return [{score: m.score, family: m.family} for m in self.match([getattr(e, self.reads) for e in exchanges])]


@DETECTORS.register("jailbreak_similarity")
class JailbreakSimilarity(AttackSimilarity):
    """Similarity of user texts to jailbreak families (personas, refusal suppression, encodings, ...)."""

    kind = "jailbreak"
    name = "jailbreak_similarity"
    reads = "user_text"


@DETECTORS.register("injection_similarity")
class InjectionSimilarity(AttackSimilarity):
    """Similarity of user texts to prompt-injection families (override, hidden instructions, extraction)."""

    kind = "injection"
    name = "injection_similarity"
    reads = "untrusted_text"
