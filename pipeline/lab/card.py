"""The shipped heads' model card: quality on rows held out of fitting, beside baselines on the same rows.

Every figure comes from heads fitted by the shipped recipe (`defaults`) on data that leaves the
measured rows out:
- XSTest completions: no XSTest completion is in any fit, so every prompt family is held out of
  the refusal and harmful-compliance heads; the prompt-harm head, which is fitted on XSTest's
  prompts, is cross-fitted by prompt family (each family is predicted by a head fitted without it).
- JailbreakBench: cross-fitted by attack method (leave one method out), with Llama Guard 1's
  verdict and the majority class of the fitted rows as baselines.
- Whole sources held out: harmful compliance on XSTest (the heads never saw XSTest's answers),
  refusal on JailbreakBench's agreed rows with a refusal head fitted without JailbreakBench.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.detectors.head import HeadSet
from pipeline.detectors.refusal import substring_refusal
from pipeline.detectors.stack import DetectorStack
from pipeline.lab.evaluation import binary_metrics, compared, deduplicate, lead_text, load_xstest, majority_baseline, truth_of
from pipeline.lab.training import embed_frame, evaluate, fit_heads, predict_frame, take

TASK_TITLES = {"refusal": "Refusal", "harmful_compliance": "Harmful compliance", "over_refusal": "Over-refusal"}


def _refit(heads: HeadSet, frame: pd.DataFrame, parts: dict[str, np.ndarray], keep: np.ndarray, tasks: tuple[str, ...]) -> HeadSet:
    """The shipped heads with `tasks` refitted on the rows `keep` selects."""
    rows = np.flatnonzero(keep)
    refitted = fit_heads(frame.iloc[rows].reset_index(drop=True), take(parts, rows), model=heads.model, group_by="goal", tasks=tasks)
    return HeadSet(heads={**heads.heads, **refitted.heads}, model=heads.model)


def _with_majority(metrics: dict[str, Any], truth: np.ndarray, pred: np.ndarray, train_truth: np.ndarray, n_boot: int) -> dict[str, Any]:
    return {**metrics, "majority": compared(truth, pred, majority_baseline(train_truth, len(truth)), n_boot)}


def _counts(truth: np.ndarray, pred: np.ndarray, measured_on: str) -> dict[str, Any]:
    """The confusion counts a rate correction needs (sensitivity and specificity with their sizes)."""
    return {
        "measured_on": measured_on,
        "tp": int(((truth == 1) & (pred == 1)).sum()),
        "fn": int(((truth == 1) & (pred == 0)).sum()),
        "tn": int(((truth == 0) & (pred == 0)).sum()),
        "fp": int(((truth == 0) & (pred == 1)).sum()),
    }


def xstest_section(data: Path, heads: HeadSet, frame: pd.DataFrame, parts: dict[str, np.ndarray], embedder: Any, n_boot: int) -> tuple[dict, dict]:
    """Refusal, harmful compliance and over-refusal on XSTest's completions, cross-fitted by prompt family."""
    xs = deduplicate(load_xstest(data / "xstest"))
    xparts = embed_frame(DetectorStack(embedder), xs)
    preds = []
    for family in sorted(xs["family"].unique()):
        keep = ~((frame["source"] == "xstest_prompts") & (frame["family"] == family)).to_numpy()
        fold = DetectorStack(embedder, head=_refit(heads, frame, parts, keep, ("prompt_harm",)))
        rows = np.flatnonzero((xs["family"] == family).to_numpy())
        preds.append(predict_frame(fold, xs.iloc[rows], take(xparts, rows)))
    pred = pd.concat(preds).loc[xs.index]
    metrics = evaluate(xs, pred, n_boot=n_boot)
    for task, column in (("refusal", "refusal"), ("harmful_compliance", "harmful")):
        labelled = frame[column].dropna()
        train_truth = (labelled.isin(["full", "partial"]) if task == "refusal" else labelled.astype(int) == 1).astype(int).to_numpy()
        metrics[task] = _with_majority(metrics[task], truth_of(xs, task), pred[f"pred:{task}"].to_numpy(), train_truth, n_boot)
    errors = {"refusal": _counts(truth_of(xs, "refusal"), pred["pred:refusal"].to_numpy(), "XSTest completions, human labels (no XSTest answer is fitted)")}
    return {"rows": len(xs), "tasks": metrics}, errors


def jbb_section(heads: HeadSet, frame: pd.DataFrame, parts: dict[str, np.ndarray], embedder: Any, n_boot: int) -> tuple[dict, dict]:
    """Harmful compliance on JailbreakBench, leave one attack method out (per method and pooled)."""
    jbb = frame["source"] == "jailbreakbench"
    truth, pred, guard, majority, per_method = [], [], [], [], {}
    for method in sorted(frame.loc[jbb, "method"].unique()):
        held = (jbb & (frame["method"] == method)).to_numpy()
        fold = DetectorStack(embedder, head=_refit(heads, frame, parts, ~held, ("harmful_compliance", "prompt_harm")))
        rows = np.flatnonzero(held)
        test = frame.iloc[rows]
        p = predict_frame(fold, test, take(parts, rows))["pred:harmful_compliance"].to_numpy()
        t = test["harmful"].astype(int).to_numpy()
        m = majority_baseline(frame.loc[jbb & ~held, "harmful"].astype(int).to_numpy(), len(rows))
        g = test["base:llama_guard1:harmful_compliance"].to_numpy(dtype=float)
        per_method[method] = _systems(t, p, g, m, n_boot)
        truth.append(t), pred.append(p), guard.append(g), majority.append(m)
    t, p = np.concatenate(truth), np.concatenate(pred)
    pooled = _systems(t, p, np.concatenate(guard), np.concatenate(majority), n_boot)
    errors = {"harmful_compliance": _counts(t, p, "JailbreakBench, each attack method held out of fitting (its judge's labels)")}
    return {"pooled": pooled, "methods": per_method}, errors


def _systems(truth: np.ndarray, pred: np.ndarray, guard: np.ndarray, majority: np.ndarray, n_boot: int) -> dict[str, Any]:
    present = ~np.isnan(guard)
    return {
        "detector": binary_metrics(truth, pred, n_boot=n_boot),
        "llama_guard1": {**compared(truth[present], pred[present], guard[present].astype(int), n_boot), "missing": int((~present).sum())},
        "majority": compared(truth, pred, majority, n_boot),
    }


def lodo_section(heads: HeadSet, frame: pd.DataFrame, parts: dict[str, np.ndarray], embedder: Any, n_boot: int) -> dict[str, Any]:
    """JailbreakBench held out whole from the refusal head (XSTest's answers are held out of every fit already)."""
    jbb = (frame["source"] == "jailbreakbench").to_numpy()
    fold = DetectorStack(embedder, head=_refit(heads, frame, parts, ~jbb, ("refusal",)))
    rows = np.flatnonzero(jbb & frame["refusal"].notna().to_numpy())
    test = frame.iloc[rows]
    p = predict_frame(fold, test, take(parts, rows))["pred:refusal"].to_numpy()
    train_truth = frame.loc[~jbb & frame["refusal"].notna(), "refusal"].isin(["full", "partial"]).astype(int).to_numpy()
    t = truth_of(test, "refusal")
    # The phrase match is part of how these rows were labelled: its figure is high by construction.
    jbb_refusal = _with_majority(
        {
            "detector": binary_metrics(t, p, n_boot=n_boot),
            "substring (labelled these rows)": compared(t, p, substring_refusal(test["response"].tolist()), n_boot),
        },
        t,
        p,
        train_truth,
        n_boot,
    )
    return {"jailbreakbench (weakly labelled rows): refusal": jbb_refusal}


def build_card(data: Path, heads: HeadSet, frame: pd.DataFrame, parts: dict[str, np.ndarray], drift: Any, embedder: Any, n_boot: int = 1000) -> dict[str, Any]:
    """Every figure of the card, and the error counts the corrected rates use."""
    xstest, errors = xstest_section(data, heads, frame, parts, embedder, n_boot)
    jbb, jbb_errors = jbb_section(heads, frame, parts, embedder, n_boot)
    return {
        "head": heads.digest,
        "thresholds": {task: head.threshold for task, head in heads.heads.items()},
        "drift_head": drift.digest,
        "sources": heads.provenance["sources"],
        "heads_fitted": heads.provenance["heads_fitted"],
        "xstest_by_family": xstest,
        "jailbreakbench_by_method": jbb,
        "held_out_sources": lodo_section(heads, frame, parts, embedder, n_boot),
        "drift": {"threshold": drift.threshold, "tpr": drift.tpr, "fpr": drift.fpr, "sources": drift.sources["sources"]},
        "errors": {**errors, **jbb_errors},
    }


def _row(name: str, m: dict[str, Any]) -> str:
    cells = " | ".join(f"{m[k]['value']:.3f} [{m[k]['ci'][0]:.2f}, {m[k]['ci'][1]:.2f}]" for k in ("accuracy", "precision", "recall", "f1"))
    n = f"{m['n']}" + (f" ({m['missing']} lack it)" if m.get("missing") else "")
    return f"| {name} | {n} | {cells} | {lead_text(m)} |"


def _table(systems: dict[str, Any]) -> list[str]:
    lines = ["| system | n | accuracy | precision | recall | F1 | head − this (paired, 95% CI, McNemar p) |", "|---|---|---|---|---|---|---|"]
    return lines + [_row("shipped head" if name == "detector" else name, m) for name, m in systems.items()]


def _use(source: dict[str, Any]) -> str:
    split = f" ({source['rows_benign']} as benign, {source['rows_attack']} as attacks)" if "rows_benign" in source else ""
    return source.get("use", "") + split


def markdown(card: dict[str, Any]) -> str:
    """The card as Markdown (docs/model_card.md)."""
    out = [
        "# Model card: the shipped detector heads",
        "",
        "Generated by `safemon detectors build-defaults` with the heads it wrote (detector heads "
        f"`{card['head']}`, drift attack head `{card['drift_head']}`); do not edit by hand. Every figure is on rows "
        "the measured head was not fitted on. Intervals are 95% percentile bootstraps over rows. The heads were fitted and "
        "measured on the exact (torch) embeddings; the default int8 backend's vectors differ slightly (`bench/embedding.py`). "
        "A calibration overlay (`safemon detectors calibrate`) moves the harmful-compliance threshold, and these figures "
        "then no longer describe it.",
        "",
        "## What the heads are fitted on",
        "",
        "| source | licence | rows | sha256 |",
        "|---|---|---|---|",
        *[f"| {s['name']} | {s['licence']} | {s['rows']} | {s.get('sha256', '')[:16]} |" for s in card["sources"]],
        "",
        *[f"- {task}: " + ", ".join(f"{n} rows from {src}" for src, n in by.items()) for task, by in card["heads_fitted"].items()],
        "",
        "XSTest's completions (model outputs, evaluation use only) and the CC BY-NC benign instructions train nothing shipped.",
        "The refusal labels are weak: JailbreakBench answers both its judge and Llama Guard 1 call jailbroken (no refusal), "
        "and answers where the refusal phrases and the built-in exemplar detector agree. Expect the refusal head to be "
        "about as good as a phrase match on other models' answers, and fit your own head on labelled answers of your model "
        "(`safemon detectors fit`) when that is not enough.",
        "",
        f"## XSTest completions, held out by prompt family ({card['xstest_by_family']['rows']} deduplicated answers of gpt4, llama2orig, mistralinstruct; human labels)",
    ]
    for task, systems in card["xstest_by_family"]["tasks"].items():
        out += ["", f"### {TASK_TITLES[task]}", "", *_table(systems)]
    out += ["", "## JailbreakBench, harmful compliance held out by attack method (leave one method out; labels: JailbreakBench's judge)", ""]
    out += ["### All methods", "", *_table(card["jailbreakbench_by_method"]["pooled"])]
    for method, systems in card["jailbreakbench_by_method"]["methods"].items():
        out += ["", f"### {method} held out", "", *_table(systems)]
    out += [
        "",
        "## Whole sources held out (what predicts behaviour on a new model)",
        "",
        "No XSTest answer is in any fit, so the XSTest refusal and harmful-compliance tables above are whole-source figures:",
        "the heads meet those three models' answers, and XSTest's labels, for the first time there.",
        "",
    ]
    for name, systems in card["held_out_sources"].items():
        out += [f"### {name}", "", *_table(systems), ""]
    d = card["drift"]
    out += [
        "## Drift attack head",
        "",
        f"Threshold {d['threshold']:.3f}; on a held-out quarter of its own fit texts: tpr {d['tpr']:.3f}, fpr {d['fpr']:.4f}. "
        "Power and false alarms on evaluation windows disjoint from its fit texts: `bench/eval_drift.py`.",
        "",
        "| source | licence | texts | use |",
        "|---|---|---|---|",
        *[f"| {s['name']} | {s['licence']} | {s['rows']} | {_use(s)} |" for s in d["sources"]],
        "",
    ]
    return "\n".join(out)
