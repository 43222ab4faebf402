"""The lexical view of a response: TF-IDF weights of its words, word pairs and character n-grams.

The embedded gist says what a response is about and whether it opens with a refusal; whether it
goes on to deliver what was asked shows in its wording over the whole answer ("Step 1", amounts,
commands, a story that never gets to the point). A `Lexicon` is fitted with the head that reads
it, on that head's training answers only, and saved inside the head's artifact: its terms (in
column order) and their inverse document frequencies.

The terms are scikit-learn's `TfidfVectorizer` ones (lower-cased words of two or more word
characters and adjacent pairs of them; `char_wb` 3-5-grams of space-padded words) with its
smoothed idf, sublinear term frequency and unit-length rows per analyzer, written out here in
numpy: reading a response costs no model call and no scikit-learn import at start-up.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

# The first characters of a response that are read: enough for any answer the shipped head is
# fitted on, and a bound on the time a very long answer costs.
LEXICAL_CHARS = 2000
MIN_DF = 2  # a term must occur in two training answers to be kept
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


def words(text: str) -> list[str]:
    """Lower-cased words of two or more word characters, then each adjacent pair."""
    tokens = _TOKEN.findall(text.lower())
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]


def chars(text: str, low: int = 3, high: int = 5) -> list[str]:
    """Character n-grams of each space-padded word, `low` to `high` long; a word shorter than an n once, whole."""
    out: list[str] = []
    for word in text.lower().split():
        padded = f" {word} "
        for n in range(low, high + 1):
            if len(padded) <= n:
                out.append(padded)
                break
            out.extend(padded[i : i + n] for i in range(len(padded) - n + 1))
    return out


ANALYZERS: dict[str, Callable[[str], list[str]]] = {"word": words, "char": chars}


@dataclass(frozen=True, eq=False)
class SparseRows:
    """Rows of a sparse matrix in CSR layout, in numpy alone (the runtime imports no scipy.sparse)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    n_cols: int

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.indptr) - 1, self.n_cols

    def __matmul__(self, dense: np.ndarray) -> np.ndarray:
        """(n, k) = these rows times a dense (n_cols, k) matrix."""
        dense = np.asarray(dense, dtype=np.float64)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        columns = [np.bincount(rows, weights=self.data * dense[self.indices, j], minlength=self.shape[0]) for j in range(dense.shape[1])]
        return np.stack(columns, axis=1) if columns else np.zeros((self.shape[0], 0))

    def to_scipy(self) -> Any:
        """The same rows as a scipy CSR matrix (for fitting)."""
        import scipy.sparse as sp

        matrix = sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape, copy=True)  # sorting must not touch these rows
        matrix.sort_indices()
        return matrix


def _cut(texts: Sequence[str]) -> list[str]:
    return [str(t)[:LEXICAL_CHARS] for t in texts]


@dataclass(frozen=True, eq=False)
class Lexicon:
    """Per analyzer, the kept terms in column order and their idf weights."""

    terms: dict[str, tuple[str, ...]]
    idf: dict[str, np.ndarray]

    @classmethod
    def fit(cls, texts: Sequence[str]) -> Lexicon:
        """The terms of `texts` found in at least MIN_DF of them, sorted, with idf = ln((1 + n) / (1 + df)) + 1."""
        cut = _cut(texts)
        terms, idf = {}, {}
        for name, analyse in ANALYZERS.items():
            df = Counter(term for text in cut for term in set(analyse(text)))
            kept = sorted(term for term, count in df.items() if count >= MIN_DF)
            terms[name] = tuple(kept)
            idf[name] = np.array([math.log((1 + len(cut)) / (1 + df[t])) + 1.0 for t in kept], dtype=np.float32)
        return cls(terms, idf)

    @cached_property
    def _columns(self) -> dict[str, dict[str, int]]:
        offset, out = 0, {}
        for name in ANALYZERS:
            out[name] = {term: offset + i for i, term in enumerate(self.terms[name])}
            offset += len(self.terms[name])
        return out

    @cached_property
    def _weights(self) -> np.ndarray:
        return np.concatenate([self.idf[name] for name in ANALYZERS]).astype(np.float64)

    @property
    def size(self) -> int:
        return sum(len(t) for t in self.terms.values())

    def transform(self, texts: Sequence[str]) -> SparseRows:
        """(n, size) features: per analyzer, (1 + ln count) x idf of each kept term, scaled to unit length; blocks side by side."""
        indptr, indices, counts, blocks = [0], [], [], []
        for text in _cut(texts):
            for block, (name, analyse) in enumerate(ANALYZERS.items()):
                columns = self._columns[name]
                for term, count in Counter(analyse(text)).items():
                    column = columns.get(term)
                    if column is not None:
                        indices.append(column)
                        counts.append(count)
                        blocks.append(block)
            indptr.append(len(indices))
        cols = np.asarray(indices, dtype=np.int64)
        values = (1.0 + np.log(np.asarray(counts, dtype=np.float64))) * self._weights[cols]
        # Each row's blocks scaled to unit length: squared sums per (row, block) segment.
        rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        segment = rows * len(ANALYZERS) + np.asarray(blocks, dtype=np.int64)
        norms = np.sqrt(np.bincount(segment, weights=values**2, minlength=(len(indptr) - 1) * len(ANALYZERS)))
        return SparseRows(np.asarray(indptr, dtype=np.int64), cols, values / np.where(norms > 0, norms, 1.0)[segment], self.size)

    def fingerprint(self) -> bytes:
        """What decides the features, as bytes to hash with the head's weights."""
        h = hashlib.sha256(json.dumps({"chars": LEXICAL_CHARS, "terms": self.terms}, sort_keys=True, default=list).encode())
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
