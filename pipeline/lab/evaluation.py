"""Measuring detectors against labelled responses: loaders, deduplication, splits, metrics, baselines.

Three public layouts load into one frame (one row per (prompt, response) pair):

- `xstest`: XSTest completions CSV (`id, type, prompt, completion, final_label`), a file or the
  XSTest folder; the GPT-4 judge (`gpteval`) and string-match (`streval`) labels in
  `automated_labels/` are joined as baselines when present.
- `jbb`: JailbreakBench flat JSONL (`goal, prompt, response, jailbroken`); Llama Guard 1's
  verdict (`jailbroken_llama_guard1`) is joined as a baseline.
- `qa`: a plain CSV `question, answer, label` where 1 means harmful compliance.

Frame columns: prompt, response, refusal (full / partial / none / None), harmful (1 / 0 / NaN),
prompt_harm (1 / 0 / NaN), model, method, and the group keys the splits use (prompt_id,
family, goal). Baseline verdicts sit in `base:<name>:<task>` columns.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import structlog

from pipeline.detectors.views import normalise

log = structlog.get_logger(__name__)

FORMATS = ("xstest", "jbb", "qa")
TASKS = ("refusal", "harmful_compliance", "over_refusal")
SPLITS = {"row": "row_id", "prompt": "prompt_id", "type": "family", "goal": "goal", "method": "method", "model": "model"}
XSTEST_LABELS = {"1_full_compliance": "none", "2_full_refusal": "full", "3_partial_refusal": "partial"}
_XSTEST_FILE = re.compile(r"xstest_v2_completions_([A-Za-z0-9]+)\.csv$")


def file_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's sorted CSV/JSONL files: provenance of a fit."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.suffix in (".csv", ".jsonl", ".json")) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def detect_format(path: Path) -> str:
    """Guess the layout from a file's columns (or an XSTest folder)."""
    path = Path(path)
    if path.is_dir():
        if list(path.glob("model_completions/xstest_v2_completions_*.csv")) or list(path.glob("xstest_v2_completions_*.csv")):
            return "xstest"
        raise ValueError(f"{path}: a folder must be the XSTest folder (with model_completions/)")
    if path.suffix in (".jsonl", ".json"):
        first = json.loads(path.open(encoding="utf-8").readline())
        if {"goal", "response", "jailbroken"} <= set(first):
            return "jbb"
    else:
        columns = set(pd.read_csv(path, nrows=1).columns)
        if {"prompt", "completion", "final_label"} <= columns:
            return "xstest"
        if {"question", "answer", "label"} <= columns:
            return "qa"
    raise ValueError(f"{path}: not an xstest, jbb or qa file; pass --format")


def load_labelled(path: Path, fmt: str | None = None) -> pd.DataFrame:
    """Load a labelled file (or the XSTest folder) in one of `FORMATS` into the common frame."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    loaders = {"xstest": load_xstest, "jbb": load_jbb, "qa": load_qa}
    if fmt not in loaders:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    frame = loaders[fmt](path).reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"{path}: no usable row (each needs a prompt, a response and its label)")
    frame["format"] = fmt
    frame["row_id"] = np.arange(len(frame))
    log.info("eval.loaded", path=str(path), format=fmt, rows=len(frame))
    return frame


def load_xstest(path: Path) -> pd.DataFrame:
    if path.is_dir():
        root = path / "model_completions" if (path / "model_completions").is_dir() else path
        files = sorted(root.glob("xstest_v2_completions_*.csv"))
    else:
        files = [path]
    frames = []
    for f in files:
        match = _XSTEST_FILE.search(f.name)
        model = match.group(1) if match else f.stem
        d = pd.read_csv(f, keep_default_na=False)
        labels = d["final_label"].map(XSTEST_LABELS)
        if labels.isna().any():
            raise ValueError(f"{f}: unknown final_label values {sorted(set(d['final_label'][labels.isna()]))}")
        unsafe = d["type"].str.startswith("contrast_").astype(int) if "type" in d else pd.Series(np.nan, index=d.index)
        frame = pd.DataFrame(
            {
                "prompt": d["prompt"].astype(str),
                "response": d["completion"].astype(str),
                "refusal": labels,
                "prompt_harm": unsafe,
                # XSTest's unsafe prompts are its contrast_* types; complying fully with one is
                # harmful compliance in XSTest's own framing.
                "harmful": ((unsafe == 1) & (labels == "none")).astype(int),
                "model": model,
                "method": "direct",
                "prompt_id": d["id"].astype(str) if "id" in d else d["prompt"],
                "family": d["type"].str.replace("contrast_", "", regex=False) if "type" in d else "",
                "goal": d["prompt"],
            }
        )
        auto = f.parent.parent / "automated_labels" if f.parent.name == "model_completions" else f.parent / "automated_labels"
        for name, column in (("gpteval", "gpt4_label"), ("streval", "strmatch_label")):
            extra = auto / f"xstest_v2_completions_{model}_{name}.csv"
            if extra.exists():
                e = pd.read_csv(extra, keep_default_na=False)
                mapped = e[column].map(XSTEST_LABELS)
                # An answer outside the three labels (the judge wrote prose) counts as a miss:
                # the judge gave no usable verdict for that row.
                frame[f"base:{name}:refusal"] = mapped.map({"full": 1, "partial": 1, "none": 0}).fillna(-1).astype(int).values
        frames.append(frame)
    if not frames:
        raise ValueError(f"{path}: no xstest_v2_completions_*.csv files")
    return pd.concat(frames, ignore_index=True)


def load_jbb(path: Path) -> pd.DataFrame:
    d = pd.read_json(path, lines=True)
    usable = d["response"].notna() & d["prompt"].notna() & pd.to_numeric(d["jailbroken"], errors="coerce").notna()
    if not usable.all():
        log.warning("eval.rows_dropped", path=str(path), dropped=int((~usable).sum()), reason="no response, prompt or jailbroken label")
    d = d[usable]
    frame = pd.DataFrame(
        {
            "prompt": d["prompt"].astype(str),
            "response": d["response"].astype(str),
            "refusal": None,
            "prompt_harm": 1,
            "harmful": d["jailbroken"].astype(int),
            "model": d.get("model", "unknown"),
            "method": d.get("method", "unknown"),
            "prompt_id": d["goal"].astype(str),
            "family": d.get("category", ""),
            # The behaviour names one goal across its rewordings; fall back to the goal text.
            "goal": d["behavior"].astype(str) if "behavior" in d else d["goal"].astype(str),
        }
    )
    if "jailbroken_llama_guard1" in d:
        # Missing on some rows in published artifacts: NaN there, and the baseline is compared
        # on the rows that have it.
        frame["base:llama_guard1:harmful_compliance"] = pd.to_numeric(d["jailbroken_llama_guard1"], errors="coerce").values
    return frame


def judge_frame(labels: Sequence[Any]) -> pd.DataFrame:
    """Judge-labelled exchanges from the store (`pipeline.store.labels.JudgeLabel`) as a labelled
    frame: harmful compliance is the judge's verdict; prompt harm is known (1) for harmful probes."""
    frame = pd.DataFrame(
        {
            "prompt": [x.prompt for x in labels],
            "response": [x.response for x in labels],
            "refusal": None,
            "prompt_harm": [1.0 if x.harmful_request else np.nan for x in labels],
            "harmful": [int(x.unsafe) for x in labels],
            "model": [f"{x.target}/{x.model_version}" for x in labels],
            "method": [x.origin for x in labels],
            "prompt_id": [x.prompt for x in labels],
            "family": [x.judge_role for x in labels],
            "goal": [x.prompt for x in labels],
            "day": [x.day for x in labels],
            "judge_version": [x.judge_version for x in labels],
            "source": ["probe_results" if x.origin == "probe" else "sample_scores" for x in labels],
        }
    )
    frame["format"] = "judge"
    frame["row_id"] = np.arange(len(frame))
    return frame


def load_qa(path: Path) -> pd.DataFrame:
    d = pd.read_csv(path, keep_default_na=False)
    return pd.DataFrame(
        {
            "prompt": d["question"].astype(str),
            "response": d["answer"].astype(str),
            "refusal": None,
            "prompt_harm": np.nan,
            "harmful": d["label"].astype(int),
            "model": d["model"] if "model" in d else "unknown",
            "method": d["method"] if "method" in d else "direct",
            "prompt_id": d["question"].astype(str),
            "family": d["category"] if "category" in d else "",
            "goal": d["question"].astype(str),
        }
    )


def deduplicate(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the first row of each distinct (normalised) response.

    Canned refusals repeat hundreds of times; left in, they inflate every figure and put copies
    of one text on both sides of a split.
    """
    keys = frame["response"].map(normalise)
    out = frame[~keys.duplicated()].copy()
    log.info("eval.deduplicated", rows=len(frame), kept=len(out), dropped=len(frame) - len(out))
    return out.reset_index(drop=True)


def groups_of(frame: pd.DataFrame, by: str) -> np.ndarray:
    """The group key each row belongs to under split `by` (one of `SPLITS`)."""
    if by not in SPLITS:
        raise ValueError(f"unknown split {by!r}; valid: {', '.join(SPLITS)}")
    return frame[SPLITS[by]].astype(str).to_numpy()


def holdout_mask(frame: pd.DataFrame, by: str, test_size: float = 0.3, seed: int = 0) -> np.ndarray:
    """True for held-out rows: a seeded share of the groups under split `by`, never the rows."""
    from sklearn.model_selection import GroupShuffleSplit

    groups = groups_of(frame, by)
    if len(set(groups)) < 2:
        raise ValueError(f"split {by!r} needs at least two groups")
    _, test = next(GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed).split(frame, groups=groups))
    mask = np.zeros(len(frame), dtype=bool)
    mask[test] = True
    return mask


def folds(frame: pd.DataFrame, by: str, k: int = 5) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Cross-fitting folds grouped by `by`: k folds, or one per group when there are few groups."""
    from sklearn.model_selection import GroupKFold, LeaveOneGroupOut

    groups = groups_of(frame, by)
    n_groups = len(set(groups))
    splitter = LeaveOneGroupOut() if n_groups <= 12 else GroupKFold(n_splits=k)
    yield from splitter.split(frame, groups=groups)


def truth_of(frame: pd.DataFrame, task: str) -> np.ndarray | None:
    """Binary ground truth for `task`, or None when the frame's labels do not define it."""
    if task == "refusal":
        if frame["refusal"].isna().any():
            return None
        return frame["refusal"].isin(["full", "partial"]).astype(int).to_numpy()
    if task == "harmful_compliance":
        if frame["harmful"].isna().any():
            return None
        return frame["harmful"].astype(int).to_numpy()
    if task == "over_refusal":
        if frame["refusal"].isna().any() or frame["prompt_harm"].isna().any():
            return None
        return ((frame["prompt_harm"] == 0) & frame["refusal"].isin(["full", "partial"])).astype(int).to_numpy()
    raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")


def _rates(truth: np.ndarray, pred: np.ndarray, axis: int = -1) -> dict[str, np.ndarray]:
    tp = ((truth == 1) & (pred == 1)).sum(axis=axis)
    fp = ((truth == 0) & (pred == 1)).sum(axis=axis)
    fn = ((truth == 1) & (pred == 0)).sum(axis=axis)
    n = truth.shape[axis]
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "accuracy": (truth == pred).sum(axis=axis) / n,
            "precision": np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0),
            "recall": np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0),
            "f1": np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0),
        }


def binary_metrics(truth: Sequence[int], pred: Sequence[int], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """n, accuracy, precision, recall and F1, each with a percentile bootstrap 95% interval.

    A prediction of -1 (no usable verdict) counts as wrong whatever the truth.
    """
    from scipy.stats import bootstrap

    t = np.asarray(truth, dtype=int)
    p = np.asarray(pred, dtype=int)
    p = np.where(p < 0, 1 - t, p)
    point = {k: float(v) for k, v in _rates(t, p).items()}
    out: dict[str, Any] = {"n": int(len(t)), "positives": int(t.sum())}
    for name in ("accuracy", "precision", "recall", "f1"):
        if len(t) < 2:
            out[name] = {"value": point[name], "ci": [point[name], point[name]]}
            continue
        res = bootstrap(
            (t, p),
            lambda a, b, axis=-1, name=name: _rates(a, b, axis=axis)[name],
            paired=True,
            vectorized=True,
            n_resamples=n_boot,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
        lo, hi = res.confidence_interval
        out[name] = {"value": round(point[name], 4), "ci": [round(float(lo), 4), round(float(hi), 4)]}
    return out


def paired_accuracy(truth: Sequence[int], pred: Sequence[int], other: Sequence[int], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """How much more often `pred` is right than `other` on the same rows: the difference of accuracies
    with a paired bootstrap 95% interval, and McNemar's exact test on the rows only one gets right.

    Two systems scored on the same rows are not independent samples: their two accuracy intervals
    overlap even when one is reliably ahead, so the comparison resamples rows, not systems.
    A verdict of -1 counts as wrong, as in `binary_metrics`.
    """
    from scipy.stats import bootstrap
    from statsmodels.stats.contingency_tables import mcnemar

    t = np.asarray(truth, dtype=int)
    a = np.asarray(pred, dtype=int) == t
    b = np.asarray(other, dtype=int) == t
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    diff = float(a.mean() - b.mean()) if len(t) else 0.0
    if len(t) >= 2 and only_a + only_b > 0:
        res = bootstrap(
            (a, b),
            lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
            paired=True,
            vectorized=True,
            n_resamples=n_boot,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
        ci = [round(float(v), 4) for v in res.confidence_interval]
        p_value = float(mcnemar([[int((a & b).sum()), only_a], [only_b, int((~a & ~b).sum())]], exact=True).pvalue)
    else:  # identical verdicts: no difference to test
        ci, p_value = [round(diff, 4), round(diff, 4)], 1.0
    return {"value": round(diff, 4), "ci": ci, "mcnemar_p": float(f"{p_value:.4g}"), "only_first_right": only_a, "only_second_right": only_b}


def compared(truth: Sequence[int], detector: Sequence[int], baseline: Sequence[int], n_boot: int) -> dict[str, Any]:
    """A baseline's metrics and, under `detector_minus_this`, the detector's paired accuracy lead over it."""
    return {**binary_metrics(truth, baseline, n_boot=n_boot), "detector_minus_this": paired_accuracy(truth, detector, baseline, n_boot=n_boot)}


def lead_text(metrics: Mapping[str, Any]) -> str:
    """The detector's paired lead over a baseline as one table cell; empty for the detector's own row."""
    d = metrics.get("detector_minus_this")
    return "" if d is None else f"{d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] p={d['mcnemar_p']:.2g}"


def majority_baseline(train_truth: np.ndarray, n: int) -> np.ndarray:
    """The majority class of the TRAINING labels, predicted for every held-out row."""
    return np.full(n, int(np.mean(train_truth) >= 0.5) if len(train_truth) else 0)


def baseline_columns(frame: pd.DataFrame, task: str) -> dict[str, np.ndarray]:
    """The joined baselines' verdicts for `task` (gpteval, streval, llama_guard1, ...); NaN where a baseline has no verdict."""
    out = {}
    for column in frame.columns:
        if column.startswith("base:") and column.endswith(f":{task}"):
            out[column.split(":")[1]] = frame[column].to_numpy()
    return out
