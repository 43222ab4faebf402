"""Detector quality on public data the detectors were never fitted on.

- Refusal: XSTest completions (gpt4, llama2orig, mistralinstruct) with the human `final_label`
  (2_full_refusal / 3_partial_refusal = refusal), against XSTest's own string-match baseline.
  The detector only knows the project's exemplars in pipeline/detectors/exemplars/.
- PII: recall per entity type on Presidio's synthetic sentences: the share of labelled span
  values that no longer appear in the redacted text.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import structlog

from pipeline.detectors import RefusalDetector, get_embedder, redact
from tests.support.env import DATASETS, require

log = structlog.get_logger(__name__)

XSTEST_MODELS = ("gpt4", "llama2orig", "mistralinstruct")
ROWS_PER_MODEL = 200  # 600 completions keep the run near 30 s on 2 CPU cores
REFUSAL_LABELS = {"2_full_refusal", "3_partial_refusal"}

# Floors sit a few points under the measured values (F1 0.856, accuracy 0.85; string-match
# baseline F1 0.881, accuracy 0.89): they catch a broken detector or exemplar file, not noise.
REFUSAL_F1_FLOOR = 0.80
REFUSAL_ACCURACY_FLOOR = 0.80
PII_RECALL_FLOORS = {
    "EMAIL_ADDRESS": 0.99,
    "IBAN_CODE": 0.95,
    "US_SSN": 0.95,
    "IP_ADDRESS": 0.95,
    # 13-19 digits per the card spec; Faker's 12-digit Maestro numbers are deliberately missed.
    "CREDIT_CARD": 0.90,
    # Two-group local numbers ("467 3395") are indistinguishable from ordinary numbers.
    "PHONE_NUMBER": 0.75,
}


def dataset_file(path: Path) -> Path:
    """A file of the public data: skip in a user's checkout without it, fail under CI=true."""
    require(path.exists(), f"{path} is missing (public datasets live in ../shared/datasets)")
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def f1_accuracy(truth: list[bool], pred: list[bool]) -> tuple[float, float]:
    tp = sum(t and p for t, p in zip(truth, pred, strict=True))
    fp = sum(p and not t for t, p in zip(truth, pred, strict=True))
    fn = sum(t and not p for t, p in zip(truth, pred, strict=True))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    acc = sum(t == p for t, p in zip(truth, pred, strict=True)) / len(truth)
    return f1, acc


def xstest_sample() -> list[tuple[dict[str, str], dict[str, str]]]:
    """(completion row, string-match row) pairs: a fixed, seeded sample per model."""
    root = dataset_file(DATASETS / "xstest")
    pairs = []
    for model in XSTEST_MODELS:
        rows = read_csv(root / "model_completions" / f"xstest_v2_completions_{model}.csv")
        baseline = {r["id"]: r for r in read_csv(root / "automated_labels" / f"xstest_v2_completions_{model}_streval.csv")}
        rows = [r for r in rows if r["completion"] is not None and r["id"] in baseline]
        chosen = random.Random(f"xstest-{model}").sample(rows, min(ROWS_PER_MODEL, len(rows)))
        pairs += [(r, baseline[r["id"]]) for r in chosen]
    return pairs


def test_refusal_detector_on_xstest_beats_floor_and_reports_baseline(record_property):
    pairs = xstest_sample()
    truth = [row["final_label"] in REFUSAL_LABELS for row, _ in pairs]
    baseline = [b["strmatch_label"] in REFUSAL_LABELS for _, b in pairs]
    detector = RefusalDetector(get_embedder())
    pred = detector.refused([row["completion"] for row, _ in pairs])

    f1, acc = f1_accuracy(truth, pred)
    base_f1, base_acc = f1_accuracy(truth, baseline)
    figures = {
        "n": len(pairs),
        "refusals": sum(truth),
        "detector_f1": round(f1, 3),
        "detector_accuracy": round(acc, 3),
        "strmatch_f1": round(base_f1, 3),
        "strmatch_accuracy": round(base_acc, 3),
    }
    for key, value in figures.items():
        record_property(key, value)
    log.info("eval.refusal.xstest", **figures)
    assert len(pairs) == ROWS_PER_MODEL * len(XSTEST_MODELS)
    assert 0.2 < sum(truth) / len(truth) < 0.8, "sample should hold both classes"
    assert f1 >= REFUSAL_F1_FLOOR, figures
    assert acc >= REFUSAL_ACCURACY_FLOOR, figures


def test_pii_recall_per_entity_type(record_property):
    path = dataset_file(DATASETS / "presidio_pii" / "synth_dataset_v2.json")
    rows = json.loads(path.read_text(encoding="utf-8"))
    found: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for row in rows:
        redacted = redact(row["full_text"]).text
        for span in row["spans"]:
            kind = span["entity_type"]
            if kind in PII_RECALL_FLOORS:
                total[kind] += 1
                found[kind] += span["entity_value"] not in redacted
    recall = {k: round(found[k] / total[k], 3) for k in total}
    for key, value in recall.items():
        record_property(f"recall_{key}", value)
    log.info("eval.pii.recall", **recall, support=dict(total))
    assert {"EMAIL_ADDRESS", "CREDIT_CARD", "PHONE_NUMBER"} <= set(total)
    for kind, floor in PII_RECALL_FLOORS.items():
        if total[kind]:
            assert recall[kind] >= floor, (kind, recall)


def test_pii_redaction_leaves_non_target_entities_mostly_intact():
    # Precision proxy: dates, ages, ZIP codes and street addresses are not what redact() is for;
    # if it ate many of them it would be firing on ordinary numbers.
    path = dataset_file(DATASETS / "presidio_pii" / "synth_dataset_v2.json")
    rows = json.loads(path.read_text(encoding="utf-8"))
    kept = altered = 0
    for row in rows:
        redacted = redact(row["full_text"]).text
        for span in row["spans"]:
            if span["entity_type"] in {"DATE_TIME", "AGE", "ZIP_CODE", "STREET_ADDRESS"}:
                if span["entity_value"] in redacted:
                    kept += 1
                else:
                    altered += 1
    assert kept + altered > 100
    assert altered / (kept + altered) <= 0.02, (altered, kept)
