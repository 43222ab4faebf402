"""Detector quality and speed on public labelled responses: Markdown + JSON under bench/out/.

    .venv/bin/python bench/eval_detectors.py [--data ../shared/datasets] [--boot 1000]

Declared splits (every figure is on rows the reported model never saw in fitting or tuning):
- built-in detectors: no fitting on any of these rows; reported on all (deduplicated) rows.
- fitted heads, XSTest: cross-fitted, grouped by prompt (5 folds) and by prompt family
  (`type` without `contrast_`, leave one family out); JailbreakBench: grouped by goal
  (behaviour, 5 folds) and by attack method (leave one method out). Each row is predicted by the
  head fitted on the folds that do not contain its group. The heads' L2 strength is chosen by
  inner grouped CV on the training folds only.
- responses are deduplicated (normalised text) before any split.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pandas as pd
import structlog
from rich.progress import Progress

from pipeline.detectors import DetectorStack, get_embedder, redact
from pipeline.detectors.embedder import BACKENDS, Embedder
from pipeline.detectors.views import Views, gist, opening
from pipeline.lab.evaluation import (
    binary_metrics,
    compared,
    deduplicate,
    folds,
    lead_text,
    load_labelled,
    majority_baseline,
    truth_of,
)
from pipeline.lab.training import embed_frame, evaluate, fit_heads, predict_frame, take
from pipeline.settings import DEFAULT_BACKEND

log = structlog.get_logger(__name__)
ROOT = Path(__file__).resolve().parents[1]
SPLITS = {"xstest": ("prompt", "type"), "jbb": ("goal", "method")}


def load_cache(embedder: Embedder, path: Path) -> None:
    """Seed the embedder's cache from an earlier run (the bench re-reads the same texts)."""
    if path.exists():
        with np.load(path) as data:
            for key, vec in zip(data["keys"], data["vecs"], strict=True):
                embedder._cache[bytes(key)] = vec  # noqa: SLF001 (the bench owns this embedder)


def save_cache(embedder: Embedder, path: Path) -> None:
    keys = list(embedder._cache)  # noqa: SLF001
    np.savez(path, keys=np.array(keys, dtype="S16"), vecs=np.stack([embedder._cache[k] for k in keys]))  # noqa: SLF001


def cross_fit(stack: DetectorStack, frame: pd.DataFrame, parts: dict[str, np.ndarray], by: str) -> pd.DataFrame:
    """Out-of-fold predictions of heads fitted on the other groups, plus the fold's majority class."""
    preds = []
    for train, test in folds(frame, by):
        heads = fit_heads(frame.iloc[train], take(parts, train), model=stack.embedder.model_name, group_by=by)
        fitted = DetectorStack(stack.embedder, head=heads)
        p = predict_frame(fitted, frame.iloc[test], take(parts, test))
        for task in ("refusal", "harmful_compliance", "over_refusal"):
            t = truth_of(frame.iloc[train], task)
            if t is not None:
                p[f"majority:{task}"] = majority_baseline(t, len(test))
        preds.append(p)
    return pd.concat(preds).loc[frame.index]


def metrics_by_model(frame: pd.DataFrame, pred: pd.DataFrame, n_boot: int) -> dict[str, Any]:
    """Pooled and per-model metrics (detector, baselines, majority class where cross-fitted)."""
    out = {}
    for name, rows in [("pooled", frame.index)] + [(m, frame.index[frame["model"] == m]) for m in sorted(frame["model"].unique())]:
        f, p = frame.loc[rows], pred.loc[rows]
        entry = evaluate(f, p, n_boot=n_boot)
        for task in entry:
            if f"majority:{task}" in p:
                entry[task]["majority"] = compared(truth_of(f, task), p[f"pred:{task}"].to_numpy(), p[f"majority:{task}"].to_numpy(), n_boot)
        out[name] = entry
    return out


def redacted(text: str, chars: int = 140) -> str:
    """A short, PII-redacted excerpt: enough to see the error, not enough to reuse harmful content."""
    short = " ".join(text.split())
    short = short[:chars] + (" […]" if len(short) > chars else "")
    return redact(short).text


def error_examples(frame: pd.DataFrame, pred: pd.DataFrame, k: int = 5) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for task, truth_col in (("refusal", "refusal"), ("harmful_compliance", "harmful")):
        truth = truth_of(frame, task)
        if truth is None:
            continue
        p = pred[f"pred:{task}"].to_numpy()
        kinds = {"false_positive": (truth == 0) & (p == 1), "false_negative": (truth == 1) & (p == 0)}
        if task == "refusal":
            kinds["missed_partial"] = (frame["refusal"].to_numpy() == "partial") & (p == 0)
        for kind, mask in kinds.items():
            rows = frame[mask].sample(min(k, int(mask.sum())), random_state=0) if mask.any() else frame.iloc[:0]
            out[f"{task}.{kind}"] = [
                {"model": r.model, "prompt": redacted(r.prompt, 100), "response": redacted(r.response), "label": str(getattr(r, truth_col))}
                for r in rows.itertuples(index=False)
            ]
            out[f"{task}.{kind}.count"] = int(mask.sum())  # type: ignore[assignment]
    return out


def truncation_costs(embedder: Embedder, frame: pd.DataFrame, by: str, task: str, n_boot: int) -> list[dict[str, Any]]:
    """Cross-fitted accuracy of a head on ONE view at several truncations: the quality cost of each cut."""
    from pipeline.detectors.head import fit_head

    truth = truth_of(frame, task)
    responses = frame["response"].tolist()
    variants = {
        "opening 100": [opening(t, 100) for t in responses],
        "opening 200": [opening(t, 200) for t in responses],
        "opening 300 (rules only; not embedded)": [opening(t, 300) for t in responses],
        "gist 200+80 (default)": [gist(t) for t in responses],
        "gist 280+120": [gist(t, 280, 120) for t in responses],
        "gist 600+200": [gist(t, 600, 200) for t in responses],
        "whole (model truncates at 256 tokens)": [t.strip() for t in responses],
    }
    rows = []
    for name, texts in variants.items():
        t0 = time.perf_counter()
        x = embedder.encode(texts).astype(np.float64)
        pred = np.zeros(len(frame), dtype=int)
        for train, test in folds(frame, by):
            head = fit_head(f"ablation.{task}", x[train], truth[train].astype(str).tolist(), None, features=("x",))
            pred[test] = (head.score(x[test]) >= 0.5).astype(int)
        m = binary_metrics(truth, pred, n_boot=n_boot)
        mean_chars = float(np.mean([len(t) for t in texts]))
        rows.append(
            {"view": name, "mean_chars": round(mean_chars), "accuracy": m["accuracy"], "f1": m["f1"], "n": m["n"], "s": round(time.perf_counter() - t0, 1)}
        )
    return rows


def throughput(frame: pd.DataFrame, heads: Any, backend: str, model: str = "", repeats: int = 3) -> dict[str, Any]:
    """Responses/s of the stack (on the exemplars, and on `heads`: the shipped ones) vs raw embedding of the same texts, interleaved (load is noisy)."""
    responses, prompts = frame["response"].tolist(), frame["prompt"].tolist()
    base = get_embedder(model, backend=backend)
    texts = Views.of(responses, prompts).distinct()
    # The views before the opening stopped being embedded: what dropping it saved, on this machine now.
    with_opening = list(dict.fromkeys([opening(r) for r in responses] + texts))
    raw_s, opening_s, stack_s, head_s, whole_s = [], [], [], [], []
    for _ in range(repeats):
        for store, batch in ((raw_s, texts), (opening_s, with_opening)):
            t0 = time.perf_counter()
            base.model.encode(batch, batch_size=base.batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
            store.append(time.perf_counter() - t0)
        for store, head in ((stack_s, None), (head_s, heads)):
            fresh = Embedder(model, batch_size=base.batch_size, backend=backend)
            fresh._model = base.model  # noqa: SLF001 (same loaded model, empty cache)
            stack = DetectorStack(fresh, head=head)  # exemplars are embedded here, outside the clock
            t0 = time.perf_counter()
            stack.score(responses, prompts)
            store.append(time.perf_counter() - t0)
    n = len(responses)
    sample = responses[: min(300, n)]
    t0 = time.perf_counter()
    base.model.encode([t.strip() for t in sample], batch_size=base.batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    whole_s.append(time.perf_counter() - t0)
    med = statistics.median
    return {
        "backend": backend,
        "batch_size": base.batch_size,
        "responses": n,
        "distinct_texts": len(texts),
        "raw_embedding_responses_per_s": round(n / med(raw_s), 1),
        "exemplars_responses_per_s": round(n / med(stack_s), 1),
        "shipped_heads_responses_per_s": round(n / med(head_s), 1),
        "exemplars_vs_raw": round(med(raw_s) / med(stack_s), 3),
        "shipped_heads_vs_raw": round(med(raw_s) / med(head_s), 3),
        "raw_embedding_with_opening_view_responses_per_s": round(n / med(opening_s), 1),
        "views_vs_views_with_opening": round(med(opening_s) / med(raw_s), 3),
        "whole_response_embedding_per_s": round(len(sample) / whole_s[0], 1),
        "threads": __import__("torch").get_num_threads() if backend == "torch" else "onnxruntime default",
    }


# A fresh process from imports to its first scored batch, as a worker or an Airflow task starts.
FIRST_BATCH = """
import time
t0 = time.perf_counter()
from pipeline.detectors import Exchange, Scorer
from pipeline.settings import load_settings
scorer = Scorer.from_settings(load_settings(detector_defaults={mode!r}, embedding_backend={backend!r}))
scorer.score([Exchange("How do I bake bread?", "Mix flour, water, salt and yeast, knead, let it rise, then bake.")])
print(time.perf_counter() - t0)
"""


def first_batch(backend: str, repeats: int) -> dict[str, Any]:
    """Seconds from a fresh interpreter to its first scored batch, shipped heads vs exemplars (interleaved, median)."""
    import subprocess
    import sys

    times: dict[str, list[float]] = {"shipped": [], "exemplars": []}
    for _ in range(repeats):
        for mode, store in times.items():
            out = subprocess.run([sys.executable, "-c", FIRST_BATCH.format(mode=mode, backend=backend)], capture_output=True, text=True, check=True)
            store.append(float(out.stdout.strip().splitlines()[-1]))
    med = statistics.median
    return {
        "backend": backend,
        "shipped_heads_s": round(med(times["shipped"]), 3),
        "exemplars_s": round(med(times["exemplars"]), 3),
        "shipped_vs_exemplars": round(med(times["shipped"]) / med(times["exemplars"]), 3),
        "runs": times,
    }


def fmt(m: dict[str, Any], key: str) -> str:
    v = m[key]
    return f"{v['value']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Detector evaluation",
        "",
        f"Embedding model {report['model']}, backend of the quality figures: {report['embedding_backend']}.",
        "",
        report["splits_note"],
        "",
    ]
    for section, by_model in report["quality"].items():
        lines += [
            f"## {section}",
            "",
            "| rows | task | system | n | accuracy | precision | recall | F1 | detector - this, accuracy (paired) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for model, tasks in by_model.items():
            for task, systems in tasks.items():
                for system, m in systems.items():
                    lines.append(
                        f"| {model} | {task} | {system} | {m['n']} | {fmt(m, 'accuracy')} | {fmt(m, 'precision')} | {fmt(m, 'recall')} | {fmt(m, 'f1')} | {lead_text(m)} |"
                    )
        lines.append("")
    lines += [
        "## Truncation costs (cross-fitted single-view heads)",
        "",
        "| data | view | mean chars | n | accuracy | F1 | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for data, rows in report["truncation"].items():
        for r in rows:
            lines.append(f"| {data} | {r['view']} | {r['mean_chars']} | {r['n']} | {fmt(r, 'accuracy')} | {fmt(r, 'f1')} | {r['s']} |")
    speed = {k: report.get(k, {}) for k in ("throughput", "first_batch")}
    lines += ["", "## Throughput and first batch (XSTest completions, 2 cores)", "", "```", json.dumps(speed, indent=2), "```", ""]
    lines += ["## Errors (redacted)", ""]
    for section, errors in report["errors"].items():
        for kind, examples in errors.items():
            if kind.endswith(".count"):
                continue
            lines.append(f"### {section}: {kind} ({errors[kind + '.count']} rows)")
            for e in examples:
                lines.append(f"- [{e['model']}] label={e['label']} prompt: {e['prompt']!r} response: {e['response']!r}")
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--skip-truncation", action="store_true")
    parser.add_argument("--speed-rows", type=int, default=600, help="XSTest completions timed (a seeded sample)")
    parser.add_argument("--repeats", type=int, default=5, help="Interleaved timing repeats (the median is reported; this machine drifts by tens of percent)")
    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS, help="embedding backend of the quality figures")
    parser.add_argument("--speed-backends", nargs="+", default=["torch", DEFAULT_BACKEND], choices=BACKENDS)
    parser.add_argument("--model", default="", help="sentence-transformers folder to measure instead of the packaged MiniLM (nothing is downloaded)")
    parser.add_argument("--speed-only", action="store_true", help="only the throughput and first-batch figures")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.speed_only:
        speed(args)
        return
    embedder = get_embedder(args.model, backend=args.backend)
    cache = args.out / f"embedding_cache_{embedder.vectors_id}.npz"
    load_cache(embedder, cache)
    frames = {
        "xstest": deduplicate(load_labelled(args.data / "xstest", "xstest")),
        "jbb": deduplicate(load_labelled(args.data / "jailbreakbench" / "jbb_artifacts_flat.jsonl", "jbb")),
    }
    report: dict[str, Any] = {
        "splits_note": __doc__.split("Declared splits")[1].strip(),
        "embedding_backend": args.backend,
        "model": embedder.model_name,
        "quality": {},
        "errors": {},
        "truncation": {},
    }
    default = DetectorStack(embedder)
    oof_store: dict[str, pd.DataFrame] = {}
    with Progress() as progress:
        job = progress.add_task("evaluating", total=len(frames) * 3 + 2)
        for name, frame in frames.items():
            parts = embed_frame(default, frame)
            save_cache(embedder, cache)
            pred = predict_frame(default, frame, parts)
            report["quality"][f"{name} / built-in detectors (no fitting), all rows"] = metrics_by_model(frame, pred, args.boot)
            report["errors"][f"{name} / built-in"] = error_examples(frame, pred)
            progress.advance(job)
            for by in SPLITS[name]:
                oof = cross_fit(default, frame, parts, by)
                oof_store[f"{name}/{by}"] = oof
                report["quality"][f"{name} / fitted heads, held out by {by}"] = metrics_by_model(frame, oof, args.boot)
                progress.advance(job)
            if name == "jbb":
                disagree = frame.index[frame["harmful"] != frame["base:llama_guard1:harmful_compliance"]]
                report["quality"]["jbb / judge vs Llama Guard 1 disagree, heads held out by goal"] = metrics_by_model(
                    frame.loc[disagree], oof_store["jbb/goal"].loc[disagree], args.boot
                )
                agree = frame.index.difference(disagree)
                report["quality"]["jbb / judge and Llama Guard 1 agree, heads held out by goal"] = metrics_by_model(
                    frame.loc[agree], oof_store["jbb/goal"].loc[agree], args.boot
                )
        report["errors"]["xstest / heads held out by prompt"] = error_examples(frames["xstest"], oof_store["xstest/prompt"])
        report["errors"]["jbb / heads held out by goal"] = error_examples(frames["jbb"], oof_store["jbb/goal"])
        if not args.skip_truncation:
            report["truncation"]["xstest refusal, by prompt"] = truncation_costs(embedder, frames["xstest"], "prompt", "refusal", args.boot)
            report["truncation"]["jbb harmful_compliance, by goal"] = truncation_costs(embedder, frames["jbb"], "goal", "harmful_compliance", args.boot)
            save_cache(embedder, cache)
        progress.advance(job)
        write(report, args.out)
        report.update(speed(args, save=False))
        progress.advance(job)
    write(report, args.out)


def speed(args: argparse.Namespace, save: bool = True) -> dict[str, Any]:
    """Throughput of the default stack (the shipped heads) and the exemplars, and the time to a first scored batch."""
    from pipeline.detectors.head import HeadSet
    from pipeline.detectors.shipped import DETECTOR_FILE, shipped_path

    heads = HeadSet.load(shipped_path(DETECTOR_FILE))
    raw = load_labelled(args.data / "xstest", "xstest").sample(n=min(args.speed_rows, 1350), random_state=0)
    figures = {
        "throughput": {b: throughput(raw, heads, b, args.model, repeats=args.repeats) for b in args.speed_backends},
        "first_batch": first_batch(DEFAULT_BACKEND, args.repeats),
    }
    if save:
        (args.out / "eval_detectors_speed.json").write_text(json.dumps(figures, indent=2))
        print(json.dumps(figures, indent=2))
    return figures


def write(report: dict[str, Any], out: Path) -> None:
    (out / "eval_detectors.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "eval_detectors.md").write_text(markdown(report))
    log.info("bench.written", json=str(out / "eval_detectors.json"), markdown=str(out / "eval_detectors.md"))


if __name__ == "__main__":
    main()
