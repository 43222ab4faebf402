"""The version string results scored by the shipped heads carry."""

from __future__ import annotations

from pipeline.detectors.head import HeadSet
from pipeline.detectors.shipped import DETECTOR_FILE, shipped_path


def shipped_version(backend: str) -> str:
    return f"head-{HeadSet.load(shipped_path(DETECTOR_FILE)).digest}+{backend}"
