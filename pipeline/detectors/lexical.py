"""The lexical view of a response: TF-IDF weights of its words, word pairs and character n-grams.

The embedded gist says what a response is about and whether it opens with a refusal; whether it
goes on to deliver what was asked shows in its wording over the whole answer ("Step 1", amounts,
commands, a story that never gets to the point). A `Lexicon` is fitted with the head that reads
it, on that head's training answers only, and saved inside the head's artifact: its terms (in
column order) and their inverse document frequencies. Reading it costs no model call.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp

# The first characters of a response that are read: enough for any answer the shipped head is
# fitted on, and a bound on the time a very long answer costs.
LEXICAL_CHARS = 2000
MIN_DF = 2  # a term must occur in two training answers to be kept
ANALYZERS: dict[str, dict[str, Any]] = {
    "word": {"analyzer": "word", "ngram_range": (1, 2)},
    "char": {"analyzer": "char_wb", "ngram_range": (3, 5)},
}


def _vectorizer(analyzer: str, **kwargs: Any):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(**ANALYZERS[analyzer], sublinear_tf=True, dtype=np.float64, **kwargs)


def _cut(texts: Sequence[str]) -> list[str]:
    return [str(t)[:LEXICAL_CHARS] for t in texts]


@dataclass(frozen=True, eq=False)
class Lexicon:
    """Per analyzer, the kept terms in column order and their idf weights."""

    terms: dict[str, tuple[str, ...]]
    idf: dict[str, np.ndarray]

    @classmethod
    def fit(cls, texts: Sequence[str]) -> Lexicon:
        """The terms of `texts` (kept when in at least MIN_DF of them) and their idf."""
        terms, idf = {}, {}
        for name in ANALYZERS:
            fitted = _vectorizer(name, min_df=MIN_DF).fit(_cut(texts))
            terms[name] = tuple(sorted(fitted.vocabulary_, key=fitted.vocabulary_.get))
            idf[name] = fitted.idf_.astype(np.float32)
        return cls(terms, idf)

    @cached_property
    def _vectorizers(self) -> dict[str, Any]:
        out = {}
        for name in ANALYZERS:
            vectorizer = _vectorizer(name, vocabulary=list(self.terms[name]))
            vectorizer.idf_ = self.idf[name].astype(np.float64)
            out[name] = vectorizer
        return out

    @property
    def size(self) -> int:
        return sum(len(t) for t in self.terms.values())

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """(n, size) sparse features: each analyzer's block L2-normalised, blocks side by side."""
        cut = _cut(texts)
        return sp.hstack([self._vectorizers[name].transform(cut) for name in ANALYZERS], format="csr")

    def fingerprint(self) -> bytes:
        """What decides the features, as bytes to hash with the head's weights."""
        h = hashlib.sha256(json.dumps({"chars": LEXICAL_CHARS, "analyzers": ANALYZERS, "terms": self.terms}, sort_keys=True, default=list).encode())
        for name in ANALYZERS:
            h.update(self.idf[name].astype(np.float32).tobytes())
        return h.digest()

    def meta(self) -> dict[str, Any]:
        """The JSON part of the saved lexicon (its idf weights are saved as arrays)."""
        return {"chars": LEXICAL_CHARS, "terms": {k: list(v) for k, v in self.terms.items()}}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], idf: dict[str, np.ndarray]) -> Lexicon:
        if meta.get("chars") != LEXICAL_CHARS:
            raise ValueError(f"fitted on the first {meta.get('chars')} characters, but this version reads {LEXICAL_CHARS}")
        return cls({k: tuple(meta["terms"][k]) for k in ANALYZERS}, {k: np.asarray(idf[k], dtype=np.float32) for k in ANALYZERS})
