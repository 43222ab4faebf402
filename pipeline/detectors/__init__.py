"""Detectors that score prompts and responses: refusal, harmful compliance, over-refusal, policy, attacks, PII.

Importing this package is cheap: sentence-transformers and the model load on first encode.
`Scorer` is the one detection contract the probe and stream paths share: redacted
`Exchange`s in, one `Detection` per exchange out, from the detectors registered in `DETECTORS`
(refusal and policy through `DetectorStack`, jailbreak and injection similarity).

What the default detectors (no fitting) are built from:
- the embedding model all-MiniLM-L6-v2 (packaged, offline), reading truncated views of each
  text (`views`: the head+tail gist of a response, the prompt's first 300 characters);
- `exemplars/refusal.yaml`: 42 refusal and 53 compliance openings written by this project, and
  the phrase rules in `refusal.py` (strong refusal openings, refusal phrases, eager-compliance
  openings) with constants set by hand on the unit tests' handwritten examples;
- `exemplars/policy.yaml`: project-written, non-actionable descriptions of harmful compliance
  per hazard category, with benign contrast descriptions (harmful compliance = the top category
  score times (1 - refusal); prompt harm = the prompt's top category score);
- `exemplars/attacks.yaml`: project-written paraphrases of jailbreak and injection families;
- PII: regular expressions with checksums (Luhn, IBAN mod-97).
No public data set was used to write or tune them. A fitted head (`safemon detectors fit`,
`SAFEMON_DETECTOR_HEAD`) replaces the refusal, harmful-compliance and prompt-harm decisions
with logistic heads on the same views; its artifact records what it was fitted on.
"""

from pipeline.detectors.catalog import DETECTORS
from pipeline.detectors.embedder import Embedder, get_embedder
from pipeline.detectors.pii import PiiDetector, Redaction, redact
from pipeline.detectors.policy import PolicyDetector
from pipeline.detectors.refusal import RefusalDetector
from pipeline.detectors.scorer import DETECTION_COLUMNS, Detection, Exchange, Scorer
from pipeline.detectors.similarity import InjectionSimilarity, JailbreakSimilarity, SimilarityMatch
from pipeline.detectors.stack import DetectorStack, HarmfulComplianceDetector, OverRefusalDetector, StackScore

__all__ = [
    "DETECTION_COLUMNS",
    "DETECTORS",
    "Detection",
    "Exchange",
    "Scorer",
    "DetectorStack",
    "HarmfulComplianceDetector",
    "OverRefusalDetector",
    "StackScore",
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
]
