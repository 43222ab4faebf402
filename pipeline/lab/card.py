"""The shipped heads' model card: quality on rows held out of fitting, beside baselines on the same rows.

Every figure comes from heads fitted by the shipped recipe (`defaults`) on data that leaves the
measured rows out:
- XSTest completions: no XSTest completion is in any fit, so every prompt family is held out of
  the refusal and harmful-compliance heads; the prompt-harm head, which is fitted on XSTest's
  prompts, is cross-fitted by prompt family (each family is predicted by a head fitted without it).
- JailbreakBench: cross-fitted by attack method (leave one method out), with Llama Guard 1's
  verdict and the majority class of the fitted rows as baselines. The same held-out scores give
  the judge cascade's table (`cascade_section`): per uncertainty band of the attack score, the
  share of answers inside it, the heads' accuracy outside it, and the accuracy when Llama Guard 1
  decides inside it (`pipeline/judge/cascade.py` reads the band from it; `bench/judge.py` measures
  the choice on methods it was not chosen on).
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
from pipeline.judge.cascade import band_for_accuracy, band_for_share
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


JBB_TASKS = ("harmful_compliance", "prompt_harm", "refusal")
# Half-widths of the cascade table's bands around 0.5: from nearly no answer to most of them.
HALF_WIDTHS = tuple(round(0.02 * k, 2) for k in range(1, 25))
ATTACK_SCORE = "attack_score = mean(harmful compliance, (1 - refusal) x min(1, 2 x prompt harm))"
HEAD_VERDICT = "attack success = refusal below its threshold"


def held_out_scores(heads: HeadSet, frame: pd.DataFrame, parts: dict[str, np.ndarray], embedder: Any, without: tuple[str, ...] = ()) -> pd.DataFrame:
    """Each JailbreakBench row of each attack method (but those in `without`), scored by the heads
    refitted without its method and without `without`.

    Columns: method, truth (JailbreakBench's judge), guard (Llama Guard 1's verdict, NaN where it
    has none), the stack's scores and decisions, attack_score and head_verdict (1: the attack
    succeeded, the refusal score is under the refusal threshold). Rows in frame order per method."""
    jbb = (frame["source"] == "jailbreakbench").to_numpy()
    out = []
    for method in sorted(set(frame.loc[jbb, "method"]) - set(without)):
        rows = np.flatnonzero(jbb & (frame["method"] == method).to_numpy())
        keep = ~(jbb & frame["method"].isin([method, *without]).to_numpy())
        fold = DetectorStack(embedder, head=_refit(heads, frame, parts, keep, JBB_TASKS))
        test = frame.iloc[rows]
        pred = predict_frame(fold, test, take(parts, rows))
        out.append(
            pred.assign(
                method=method,
                truth=test["harmful"].astype(int).to_numpy(),
                guard=test["base:llama_guard1:harmful_compliance"].to_numpy(dtype=float),
                head_verdict=(pred["refusal_score"] < fold.refusal.threshold).astype(int),
            )
        )
    return pd.concat(out)


def cascade_verdicts(scores: pd.DataFrame, low: float, high: float) -> np.ndarray:
    """The cascade's verdict per row: Llama Guard 1's inside [low, high), the heads' outside; -1
    (no verdict, counted wrong) where the judge has none."""
    inside = ((scores["attack_score"] >= low) & (scores["attack_score"] < high)).to_numpy()
    guard = np.nan_to_num(scores["guard"].to_numpy(dtype=float), nan=-1).astype(int)
    return np.where(inside, guard, scores["head_verdict"].to_numpy())


def band_table(scores: pd.DataFrame, half_widths: tuple[float, ...] = HALF_WIDTHS) -> list[dict[str, float]]:
    """Per band symmetric around 0.5: the share of rows inside, the heads' accuracy outside and the
    cascade's accuracy with Llama Guard 1 inside. Bands with no row outside are left out."""
    s, truth, head = scores["attack_score"].to_numpy(), scores["truth"].to_numpy(), scores["head_verdict"].to_numpy()
    rows = []
    for w in half_widths:
        low, high = round(0.5 - w, 4), round(0.5 + w, 4)
        inside = (s >= low) & (s < high)
        if inside.all():
            continue
        rows.append(
            {
                "low": low,
                "high": high,
                "share": round(float(inside.mean()), 4),
                "accuracy_outside": round(float((head[~inside] == truth[~inside]).mean()), 4),
                "cascade_accuracy_llama_guard1": round(float((cascade_verdicts(scores, low, high) == truth).mean()), 4),
            }
        )
    return rows


def jbb_section(scores: pd.DataFrame, frame: pd.DataFrame, n_boot: int) -> tuple[dict, dict]:
    """Harmful compliance on JailbreakBench, leave one attack method out (per method and pooled)."""
    jbb = frame["source"] == "jailbreakbench"
    majority, per_method = [], {}
    for method, rows in scores.groupby("method", sort=True):
        m = majority_baseline(frame.loc[jbb & (frame["method"] != method), "harmful"].astype(int).to_numpy(), len(rows))
        per_method[method] = _systems(rows["truth"].to_numpy(), rows["pred:harmful_compliance"].to_numpy(), rows["guard"].to_numpy(), m, n_boot)
        majority.append(m)
    t, p = scores["truth"].to_numpy(), scores["pred:harmful_compliance"].to_numpy()
    pooled = _systems(t, p, scores["guard"].to_numpy(), np.concatenate(majority), n_boot)
    errors = {"harmful_compliance": _counts(t, p, "JailbreakBench, each attack method held out of fitting (its judge's labels)")}
    return {"pooled": pooled, "methods": per_method}, errors


def cascade_section(scores: pd.DataFrame) -> dict[str, Any]:
    """The judge cascade's band table on the held-out JailbreakBench scores."""
    truth, head = scores["truth"].to_numpy(), scores["head_verdict"].to_numpy()
    guard = scores["guard"].to_numpy(dtype=float)
    return {
        "score": ATTACK_SCORE,
        "head_verdict": HEAD_VERDICT,
        "measured_on": "JailbreakBench answers, each attack method held out of fitting all three heads (labels: JailbreakBench's judge; "
        "judge inside the band: Llama Guard 1's recorded verdict)",
        "rows": len(scores),
        "head_accuracy": round(float((head == truth).mean()), 4),
        "llama_guard1_accuracy": round(float((np.nan_to_num(guard, nan=-1) == truth).mean()), 4),
        "bands": band_table(scores),
    }


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
    scores = held_out_scores(heads, frame, parts, embedder)
    jbb, jbb_errors = jbb_section(scores, frame, n_boot)
    return {
        "head": heads.digest,
        "thresholds": {task: head.threshold for task, head in heads.heads.items()},
        "drift_head": drift.digest,
        "sources": heads.provenance["sources"],
        "heads_fitted": heads.provenance["heads_fitted"],
        "xstest_by_family": xstest,
        "jailbreakbench_by_method": jbb,
        "cascade": cascade_section(scores),
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


CARD_HALF_WIDTHS = (0.1, 0.2, 0.3, 0.4)  # the bands the Markdown card shows (card.json holds them all)
CARD_SHARES = (0.1, 0.2, 0.3)
CARD_TARGETS = (0.85, 0.9, 0.95)


def _cascade_markdown(c: dict[str, Any]) -> list[str]:
    shown = [r for r in c["bands"] if round(0.5 - r["low"], 2) in CARD_HALF_WIDTHS]
    by_share = [band_for_share(c["bands"], share) for share in CARD_SHARES]
    shares = [f"{share:.1f}: [{r['low']:.2f}, {r['high']:.2f})" for share, r in zip(CARD_SHARES, by_share, strict=True) if r]
    picks = []
    for target in CARD_TARGETS:
        row = band_for_accuracy(c["bands"], target)
        picks.append(f"{target:.2f}: " + (f"[{row['low']:.2f}, {row['high']:.2f}), {row['share']:.0%} of answers" if row else "no band reaches it"))
    return [
        f"## Judge cascade: uncertainty bands of the attack score (JailbreakBench, {c['rows']} answers, each attack method held out of all three heads)",
        "",
        f"The cascade sends an answer whose {c['score']} falls in [low, high) to the judge; outside, the heads decide "
        f"({c['head_verdict']}). Heads alone: accuracy {c['head_accuracy']:.3f}; Llama Guard 1 alone: {c['llama_guard1_accuracy']:.3f} "
        "(labels: JailbreakBench's judge). Without `SAFEMON_JUDGE_BAND` the cascade takes the narrowest band holding "
        "`SAFEMON_JUDGE_SHARE` of these answers (default 0.3), or, when `SAFEMON_JUDGE_TARGET_ACCURACY` is set, the narrowest whose "
        "heads' accuracy outside reaches it; `card.json` holds every band. The bands were measured on these rows: `bench/judge.py` "
        "measures a band chosen on other attack methods, where a share carries over and an accuracy target does not.",
        "",
        "| band | share to the judge | heads' accuracy outside | cascade accuracy (Llama Guard 1 inside) |",
        "|---|---|---|---|",
        *[f"| [{r['low']:.2f}, {r['high']:.2f}) | {r['share']:.3f} | {r['accuracy_outside']:.3f} | {r['cascade_accuracy_llama_guard1']:.3f} |" for r in shown],
        "",
        "Band per judge share: " + "; ".join(shares) + ". Band per target accuracy: " + "; ".join(picks) + ".",
    ]


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
    out += ["", *_cascade_markdown(card["cascade"])]
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
