"""Which heads score: a configured artifact, the heads shipped in the package, or the exemplars;
and the per-deployment calibration overlay on top of them.

Unless `SAFEMON_DETECTOR_HEAD` / `SAFEMON_DRIFT_ATTACK_HEAD` name an artifact, the heads
shipped in `pipeline/detectors/defaults/` score (built by `safemon detectors build-defaults`;
their card is `docs/model_card.md`). `SAFEMON_DETECTOR_DEFAULTS=exemplars` falls back to the
built-in exemplars. `SAFEMON_CALIBRATION` points at an overlay written by
`safemon detectors calibrate` / `safemon drift calibrate`: thresholds set on the deployment's
own benign traffic, valid only for the head they were measured on.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.detectors.head import HeadError, HeadSet

if TYPE_CHECKING:
    from pipeline.detectors.embedder import Embedder
    from pipeline.drift.attacks import AttackHead
    from pipeline.settings import Settings

DETECTOR_FILE = "detector_heads.npz"
DRIFT_FILE = "drift_attack_head.npz"
CARD_FILE = "card.json"
CALIBRATION_FORMAT = "safemon.calibration"


def shipped_path(name: str) -> Path:
    """A file of the shipped defaults inside the installed package."""
    return Path(str(resources.files("pipeline.detectors").joinpath("defaults", name)))


def _head_path(configured: Path | None, shipped: str, settings: Settings) -> Path | None:
    """The configured artifact, else the shipped one (unless the exemplars are chosen)."""
    if configured is not None:
        return configured
    return shipped_path(shipped) if settings.detector_defaults == "shipped" else None


def detector_head_path(settings: Settings) -> Path | None:
    return _head_path(settings.detector_head, DETECTOR_FILE, settings)


def drift_head_path(settings: Settings) -> Path | None:
    return _head_path(settings.drift_attack_head, DRIFT_FILE, settings)


def read_calibration(path: Path | None, *, missing_ok: bool = False) -> dict[str, Any]:
    """The overlay's sections (`detectors`, `drift`); empty when none is configured (or, with
    `missing_ok`, written yet). A configured overlay that is not there is an error: the
    thresholds it should set would silently not apply."""
    if path is None:
        return {}
    if not Path(path).exists():
        if missing_ok:
            return {}
        raise HeadError(f"SAFEMON_CALIBRATION={path}: no such file; run `safemon detectors calibrate` / `safemon drift calibrate` or unset it")
    data = json.loads(Path(path).read_text())
    if data.get("format") != CALIBRATION_FORMAT:
        raise HeadError(f"{path}: not a calibration overlay (format {data.get('format')!r})")
    return data


def write_calibration(path: Path, section: str, entry: dict[str, Any]) -> None:
    """Set one section of the overlay, keeping the other."""
    data = read_calibration(path, missing_ok=True) or {"format": CALIBRATION_FORMAT}
    data[section] = entry
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=True))


def _check_base(path: Path, section: str, entry: dict[str, Any], digest: str) -> None:
    if entry["head"] != digest:
        raise HeadError(f"{path}: its {section} thresholds were calibrated for head {entry['head']}, but the head in use is {digest}; calibrate again")


def load_head(settings: Settings, embedder: Embedder) -> HeadSet | None:
    """The detector heads in use (with the calibration overlay applied), or None for the exemplars."""
    path = detector_head_path(settings)
    if path is None:
        return None
    heads = HeadSet.load(path, expect_model=embedder.model_name)
    entry = read_calibration(settings.calibration).get("detectors")
    if entry is None:
        return heads
    _check_base(settings.calibration, "detectors", entry, heads.digest)
    tuned = {task: dataclasses.replace(head, threshold=float(entry["thresholds"].get(task, head.threshold))) for task, head in heads.heads.items()}
    return dataclasses.replace(heads, heads=tuned, provenance={**heads.provenance, "calibration": entry})


def load_drift_head(settings: Settings) -> AttackHead | None:
    """The drift attack head in use (with the calibration overlay applied), or None for the exemplars."""
    from pipeline.drift.attacks import AttackHead

    path = drift_head_path(settings)
    if path is None:
        return None
    head = AttackHead.load(path)
    entry = read_calibration(settings.calibration).get("drift")
    if entry is None:
        return head
    _check_base(settings.calibration, "drift", entry, head.digest)
    return dataclasses.replace(head, threshold=float(entry["threshold"]), tpr=float(entry["tpr"]), fpr=float(entry["fpr"]))


def card_errors(heads: HeadSet | None) -> dict[str, dict[str, Any]]:
    """The shipped card's confusion counts per task, when `heads` are the shipped heads (calibrated
    or not) and the task's threshold is the one the card measured; empty otherwise."""
    path = shipped_path(CARD_FILE)
    if heads is None or not path.exists():
        return {}
    card = json.loads(path.read_text())
    if card.get("head") != (heads.provenance.get("calibration", {}).get("head") or heads.digest):
        return {}
    return {task: counts for task, counts in card["errors"].items() if task in heads.heads and heads.heads[task].threshold == card["thresholds"][task]}
