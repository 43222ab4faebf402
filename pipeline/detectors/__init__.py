"""Detectors that score prompts and responses: refusal, policy violation, attack similarity, PII.

Importing this package is cheap: sentence-transformers and the model load on first encode.
Every detector registers in `DETECTORS`; `DETECTORS.get(name)(embedder)` builds one.
"""

from pipeline.detectors.catalog import DETECTORS
from pipeline.detectors.embedder import Embedder, get_embedder
from pipeline.detectors.pii import PiiDetector, Redaction, redact
from pipeline.detectors.policy import PolicyDetector
from pipeline.detectors.refusal import RefusalDetector
from pipeline.detectors.scoring import score_responses, verdict
from pipeline.detectors.similarity import InjectionSimilarity, JailbreakSimilarity, SimilarityMatch

__all__ = [
    "DETECTORS",
    "Embedder",
    "InjectionSimilarity",
    "JailbreakSimilarity",
    "PiiDetector",
    "PolicyDetector",
    "Redaction",
    "RefusalDetector",
    "SimilarityMatch",
    "get_embedder",
    "redact",
    "score_responses",
    "verdict",
]
