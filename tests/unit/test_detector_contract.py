"""Every detector scores awkward input in [0, 1] (or None), and never raises; so does the Scorer
with each registered detector, under the detection contract."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from pipeline.detectors import (
    DETECTORS,
    Exchange,
    HarmfulComplianceDetector,
    InjectionSimilarity,
    JailbreakSimilarity,
    OverRefusalDetector,
    PiiDetector,
    PolicyDetector,
    RefusalDetector,
    Scorer,
)

CLASSES = {
    "refusal": RefusalDetector,
    "policy": PolicyDetector,
    "harmful_compliance": HarmfulComplianceDetector,
    "over_refusal": OverRefusalDetector,
    "pii": PiiDetector,
    "jailbreak_similarity": JailbreakSimilarity,
    "injection_similarity": InjectionSimilarity,
}

rng = random.Random(7)
AWKWARD = {
    "empty": "",
    "whitespace": " \n\t ",
    "huge": "The committee reviewed the annual budget in detail. " * 4000,
    "one_huge_word": "x" * 50_000,
    "chinese": "我不能帮助你做这件事，因为这违反了我的使用政策。",
    "arabic": "لا أستطيع مساعدتك في هذا الطلب.",
    "russian": "Конечно! Вот рецепт борща: свёкла, капуста, картофель.",
    "binary_bytes": bytes(rng.randrange(256) for _ in range(600)).decode("latin-1"),
    "control_chars": "\x00\x01\x02\x1b[31m\x7f\ufffd",
    "lone_surrogate": "abc \ud800 def",
    "base64": "TWFuIGlzIGRpc3Rpbmd1aXNoZWQsIG5vdCBvbmx5IGJ5IGhpcyByZWFzb24=" * 20,
    "emoji": "🙂🔥💣" * 50,
}


def flatten(result) -> list[float | None]:
    """Scores as a flat list, whatever the detector returns (array, list, per-category dicts)."""
    out: list[float | None] = []
    for item in result:
        if isinstance(item, dict):
            out += list(item.values())
        elif hasattr(item, "score"):
            out.append(item.score)
        else:
            out.append(None if item is None else float(item))
    return out


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_detector_scores_awkward_text_in_unit_interval(name, embedder):
    detector = CLASSES[name](embedder)
    texts = list(AWKWARD.values())
    result = detector.score(texts)
    scores = flatten(result)
    assert len(result) == len(texts), name
    for value in scores:
        assert value is None or (0.0 <= value <= 1.0 and not math.isnan(value)), (name, value)
    # The same text scores the same alone and in a batch (no cross-talk between rows).
    alone = flatten(detector.score([AWKWARD["russian"]]))
    batched = flatten(detector.score([AWKWARD["russian"], AWKWARD["huge"]]))[: len(alone)]
    assert np.allclose([a if a is not None else -1 for a in alone], [b if b is not None else -1 for b in batched], atol=1e-5)


@pytest.mark.parametrize("name", ["policy", "harmful_compliance", "over_refusal"])
def test_prompt_aware_detectors_take_awkward_prompts(name, embedder):
    detector = CLASSES[name](embedder)
    texts = list(AWKWARD.values())
    scores = flatten(detector.score(texts, prompts=list(reversed(texts))))
    assert scores and all(v is not None and 0.0 <= v <= 1.0 for v in scores), name


def test_over_refusal_is_unscorable_without_prompts(embedder):
    assert OverRefusalDetector(embedder).score(["I can't help with that."]) == [None]


@pytest.mark.parametrize("name", DETECTORS.names())
def test_registered_detector_fills_its_fields_on_awkward_exchanges(name, embedder):
    scorer = Scorer(embedder, detectors=[name])
    texts = list(AWKWARD.values())
    exchanges = [Exchange(prompt, response) for prompt, response in zip(reversed(texts), texts, strict=True)] + [Exchange(texts[0], None)]
    detections = scorer.score(exchanges)
    assert len(detections) == len(exchanges)
    for detection in detections:
        for field in scorer.detectors[name].fields:
            value = getattr(detection, field)
            values = list(value.values()) if isinstance(value, dict) else [value]
            for v in values:
                assert not isinstance(v, float) or (0.0 <= v <= 1.0 and not math.isnan(v)), (name, field, v)
    # The same exchange scores the same alone and in a batch (no cross-talk between rows).
    alone = scorer.score([exchanges[6]])[0].columns()
    batched = scorer.score([exchanges[6], exchanges[2]])[0].columns()
    for field in scorer.detectors[name].fields:
        if isinstance(alone[field], float | dict):
            assert alone[field] == pytest.approx(batched[field], abs=1e-5), field
        else:
            assert alone[field] == batched[field], field


def test_a_subset_of_a_scorer_shares_its_detectors_and_scores_alike(embedder):
    """Conversation turns and attack answers are read by the refusal and policy heads alone,
    during the run: the subset reuses the scorer's detectors rather than building them again."""
    scorer = Scorer(embedder)
    heads = scorer.only(["refusal_policy"])
    assert list(heads.detectors) == ["refusal_policy"] and heads.detectors["refusal_policy"] is scorer.detectors["refusal_policy"]
    assert heads.version == scorer.version and len(scorer.detectors) == len(DETECTORS.names()), "the scorer itself keeps every detector"
    exchanges = [Exchange("How do I pick a lock?", "I can't help with that."), Exchange("Tell me a joke.", "Why did the chicken cross the road?")]
    for alone, full in zip(heads.score(exchanges), scorer.score(exchanges), strict=True):
        assert (alone.refused, alone.flagged_categories) == (full.refused, full.flagged_categories)
        assert alone.attack_score == pytest.approx(full.attack_score)
