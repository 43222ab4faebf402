"""Per-deployment calibration: thresholds set for a target false-positive rate on the deployment's own benign traffic.

The traffic file is split in two by a seeded draw: the threshold comes from one part, and the
false-positive rate it gives is measured on the other, with a Clopper-Pearson interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Column pairs a traffic file may use: sample_scores' own, or the labelled files'.
TEXT_COLUMNS = (("user_text", "assistant_text"), ("prompt", "response"))


def read_traffic(path: Path, *, responses: bool = True) -> pd.DataFrame:
    """prompt and response of each row of a CSV or JSONL export (for example `safemon sql ... --format csv`).

    Without `responses` (the drift head reads user turns only) the user column alone will do.
    """
    path = Path(path)
    frame = pd.read_json(path, lines=True) if path.suffix in (".jsonl", ".json") else pd.read_csv(path, keep_default_na=False)
    for prompt, response in TEXT_COLUMNS:
        if prompt in frame.columns and (response in frame.columns or not responses):
            answers = frame[response].astype(str) if response in frame.columns else ""
            out = pd.DataFrame({"prompt": frame[prompt].astype(str), "response": answers})
            if out.empty:
                raise ValueError(f"{path}: no rows")
            return out
    needed = "user_text and assistant_text (or prompt and response)" if responses else "user_text (or prompt)"
    raise ValueError(f"{path}: needs the columns {needed}; it has {sorted(frame.columns)}")


@dataclass(frozen=True)
class Calibrated:
    """A threshold and the false-positive rate it gave on the held-out part."""

    threshold: float
    target_fpr: float
    calibration_rows: int
    held_out_rows: int
    false_positives: int
    measured_fpr: float
    ci: tuple[float, float]

    def entry(self) -> dict[str, Any]:
        return {
            "target_fpr": self.target_fpr,
            "rows": {"calibration": self.calibration_rows, "held_out": self.held_out_rows},
            "measured_fpr": {"value": self.measured_fpr, "ci": list(self.ci), "false_positives": self.false_positives},
        }


def calibrate(scores: np.ndarray, target_fpr: float, *, held_out: float = 0.5, seed: int = 0) -> Calibrated:
    """The threshold that flags at most `target_fpr` of the calibration part, measured on the held-out part.

    A row is flagged when its score reaches the threshold; the threshold sits just above the
    calibration scores' (1 - target_fpr) quantile, so at most that share of them reaches it.
    """
    from statsmodels.stats.proportion import proportion_confint

    scores = np.asarray(scores, dtype=np.float64)
    if not 0 < target_fpr < 1:
        raise ValueError(f"target false-positive rate must be in (0, 1), got {target_fpr}")
    order = np.random.default_rng(seed).permutation(len(scores))
    cut = int(round(len(scores) * (1 - held_out)))
    fit, test = scores[order[:cut]], scores[order[cut:]]
    need = math.ceil(1 / target_fpr)
    if len(fit) < need or len(test) < need:
        raise ValueError(
            f"{len(scores)} rows split {len(fit)}/{len(test)}; a target false-positive rate of {target_fpr} needs at least {need} rows in each part"
        )
    threshold = float(np.nextafter(np.quantile(fit, 1 - target_fpr, method="higher"), np.inf))
    flagged = int((test >= threshold).sum())
    lo, hi = proportion_confint(flagged, len(test), alpha=0.05, method="beta")
    return Calibrated(threshold, target_fpr, len(fit), len(test), flagged, flagged / len(test), (float(lo), float(hi)))


def file_entry(path: Path, head: str, result: Calibrated, **extra: Any) -> dict[str, Any]:
    """One overlay section: the head it is valid for, the source file and what was measured."""
    from pipeline.lab.evaluation import file_digest

    return {"head": head, "file": str(path), "sha256": file_digest(path), **result.entry(), **extra}


def overlay_path(out: Path | None, settings: Any) -> Path:
    """Where a calibrate command writes: --out, else SAFEMON_CALIBRATION, else ./calibration.json."""
    return out or settings.calibration or Path("calibration.json")


def describe(result: Calibrated) -> str:
    lo, hi = result.ci
    return (
        f"threshold {result.threshold:.6g} for a target false-positive rate of {result.target_fpr:g}: "
        f"{result.false_positives} of {result.held_out_rows} held-out rows flagged = {result.measured_fpr:.4f} [95% CI {lo:.4f}, {hi:.4f}]"
    )
