"""The detector registry and the exemplar data the detectors compare texts against."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import yaml

from pipeline.registry import Registry

# The detectors `Scorer` runs (see `scorer` for what a registered class provides).
DETECTORS: Registry[Any] = Registry("detector")


@cache
def load_exemplars(name: str) -> dict[str, Any]:
    """Read `exemplars/<name>.yaml` from the package (the detectors' own, hand-written texts)."""
    text = resources.files("pipeline.detectors").joinpath("exemplars", f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"exemplars/{name}.yaml must hold a mapping")
    return data


def top_k_mean(sims: np.ndarray, k: int) -> np.ndarray:
    """Mean of the k largest values along the last axis: smoother than the max, sharper than the mean."""
    k = max(1, min(k, sims.shape[-1]))
    if k == sims.shape[-1]:
        return sims.mean(axis=-1)
    part = np.partition(sims, sims.shape[-1] - k, axis=-1)[..., -k:]
    return part.mean(axis=-1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic squashing into (0, 1)."""
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50.0, 50.0)))


# The modules whose hand-set rules and constants decide the built-in scores.
_RULE_MODULES = ("catalog.py", "policy.py", "refusal.py", "similarity.py", "stack.py", "views.py")


@cache
def exemplars_digest() -> str:
    """What decides the built-in detectors' scores (the exemplar files and the rule modules), hashed."""
    package = resources.files("pipeline.detectors")
    h = hashlib.sha256()
    for name in sorted(p.name for p in package.joinpath("exemplars").iterdir() if p.name.endswith(".yaml")):
        h.update(name.encode() + package.joinpath("exemplars", name).read_bytes())
    for name in _RULE_MODULES:
        h.update(name.encode() + package.joinpath(name).read_bytes())
    return h.hexdigest()[:12]
