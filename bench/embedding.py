"""Embedding backends compared: throughput, agreement with torch fp32, detector F1; Markdown + JSON under bench/out/.

    .venv/bin/python bench/embedding.py [--data ../shared/datasets] [--threads 2] [--repeats 1]

Every backend (torch fp32 = sentence-transformers, onnx fp32, onnx int8) embeds the same 2,000
distinct real texts: 1,000 short prompts (benign instructions and HarmBench behaviours) and
1,000 long responses (JailbreakBench and XSTest completions), with a fresh embedder and its
cache off, after a warm-up on other texts, with torch and onnxruntime on `--threads` threads.
Ratios are to torch fp32 in the same run. Detector F1: the refusal head on XSTest, held out by
prompt, and the harmful-compliance head on JailbreakBench, held out by goal, refitted and
cross-fitted on each backend's embeddings exactly as bench/eval_detectors.py does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import structlog  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.eval_detectors import cross_fit  # noqa: E402
from pipeline.detectors.embedder import BACKENDS, Embedder  # noqa: E402
from pipeline.detectors.stack import DetectorStack  # noqa: E402
from pipeline.lab.evaluation import deduplicate, load_labelled  # noqa: E402
from pipeline.lab.training import embed_frame, evaluate  # noqa: E402

log = structlog.get_logger(__name__)
console = Console(width=None if sys.stdout.isatty() else 160)  # the table is wide; do not squeeze it in logs
PER_KIND = 1000
WARMUP = 64
# (data file, held-out group, task whose F1 is reported)
DETECTOR_TASKS = {"xstest": ("xstest", "prompt", "refusal"), "jbb": ("jailbreakbench/jbb_artifacts_flat.jsonl", "goal", "harmful_compliance")}


def machine_line() -> str:
    """Cores, CPU model and the SIMD flags that decide int8 speed."""
    model, flags = platform.processor() or "unknown CPU", set()
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8") if f in flags]
    return f"{os.cpu_count()} cores, {model}, flags: {' '.join(simd) or 'none of avx2/avx512/vnni'}"


def distinct(texts: list[str], n: int, rng: np.random.Generator, seen: set[str]) -> list[str]:
    """`n` distinct non-empty texts not already in `seen`, drawn in a seeded order."""
    out = []
    for i in rng.permutation(len(texts)):
        text = texts[i]
        if text and text.strip() and text not in seen:
            seen.add(text)
            out.append(text)
            if len(out) == n:
                return out
    raise ValueError(f"only {len(out)} distinct texts, {n} wanted")


def load_texts(data: Path) -> tuple[list[str], list[str], list[str]]:
    """1,000 short prompts, 1,000 long responses, and warm-up texts that are neither."""
    benign = [r["instruction"] for r in json.loads((data / "benign_instructions" / "harmless_val.json").read_text())]
    behaviours = pd.read_csv(data / "harmbench" / "harmbench_behaviors_text_all.csv")["Behavior"].dropna().tolist()
    jbb = [r["response"] for r in map(json.loads, (data / "jailbreakbench" / "jbb_artifacts_flat.jsonl").read_text().splitlines()) if r.get("response")]
    xstest = [t for f in sorted((data / "xstest" / "model_completions").glob("*.csv")) for t in pd.read_csv(f)["completion"].dropna()]
    rng, seen = np.random.default_rng(0), set()
    short = distinct(behaviours, 300, rng, seen) + distinct(benign, PER_KIND - 300, rng, seen)
    long = distinct(jbb, PER_KIND // 2, rng, seen) + distinct(xstest, PER_KIND // 2, rng, seen)
    warmup = distinct(benign, WARMUP // 2, rng, seen) + distinct(xstest, WARMUP // 2, rng, seen)
    return short, long, warmup


def throughput(backend: str, short: list[str], long: list[str], warmup: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Texts/s on short, long and all texts, and the vectors (cache off, so every text is embedded)."""
    emb = Embedder(backend=backend, cache_size=0, threads=args.threads, onnx_dir=args.onnx_dir)
    t0 = time.perf_counter()
    emb.encode(warmup)  # loads (exports on a cold ONNX cache) and warms the kernels
    load_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {"short": [], "long": []}
    vecs: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for kind, texts in (("short", short), ("long", long)):
            t0 = time.perf_counter()
            vecs[kind] = emb.encode(texts)
            times[kind].append(time.perf_counter() - t0)
    assert emb.hits == 0, "the timing must not be helped by the cache"
    s, lg = statistics.median(times["short"]), statistics.median(times["long"])
    return {
        "load_and_warmup_s": round(load_s, 1),
        "short_per_s": len(short) / s,
        "long_per_s": len(long) / lg,
        "all_per_s": (len(short) + len(long)) / (s + lg),
        "vecs": np.vstack([vecs["short"], vecs["long"]]),
    }


def detector_f1(backend: str, frames: dict[str, pd.DataFrame], args: argparse.Namespace) -> dict[str, float]:
    """F1 of the refitted heads on held-out rows, with this backend's embeddings throughout."""
    emb = Embedder(backend=backend, cache_size=200_000, threads=args.threads, onnx_dir=args.onnx_dir)
    stack = DetectorStack(emb)
    out = {}
    for name, (_, by, task) in DETECTOR_TASKS.items():
        frame = frames[name]
        oof = cross_fit(stack, frame, embed_frame(stack, frame), by)
        out[f"{name}_{task}_f1"] = float(evaluate(frame, oof, n_boot=args.boot)[task]["detector"]["f1"]["value"])
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Embedding backends",
        "",
        f"Machine: {report['machine']}. Threads: {report['threads']}. Texts: {report['texts']}.",
        "",
        "| backend | short texts/s | long texts/s | all texts/s | × torch (short / long / all) | cosine to torch min / mean | XSTest refusal F1 (Δ) | JBB harmful F1 (Δ) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["backends"]:
        lines.append(
            f"| {row['backend']} | {row['short_per_s']:.1f} | {row['long_per_s']:.1f} | {row['all_per_s']:.1f} "
            f"| {row['ratio_short']:.2f} / {row['ratio_long']:.2f} / {row['ratio_all']:.2f} | {row['cos_min']:.4f} / {row['cos_mean']:.4f} "
            f"| {row['xstest_refusal_f1']:.3f} ({row['delta_xstest_refusal_f1']:+.3f}) | {row['jbb_harmful_compliance_f1']:.3f} ({row['delta_jbb_harmful_compliance_f1']:+.3f}) |"
        )
    return "\n".join(lines + ["", report["note"], ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--onnx-dir", type=Path, default=None, help="ONNX export cache (default: the settings' default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="Timing repeats per backend (the median is reported)")
    parser.add_argument("--boot", type=int, default=200, help="Bootstrap resamples behind the F1 intervals (only the point is reported)")
    parser.add_argument("--skip-f1", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    short, long, warmup = load_texts(args.data)
    frames = {name: deduplicate(load_labelled(args.data / path, name)) for name, (path, _, _) in DETECTOR_TASKS.items()}
    machine = machine_line()
    console.print(f"machine: {machine}")
    results: dict[str, dict[str, Any]] = {}
    with Progress(console=console) as progress:
        job = progress.add_task("backends", total=len(BACKENDS) * (1 if args.skip_f1 else 2))
        for backend in BACKENDS:
            progress.update(job, description=f"{backend}: throughput")
            results[backend] = throughput(backend, short, long, warmup, args)
            progress.advance(job)
        for backend in [] if args.skip_f1 else BACKENDS:
            progress.update(job, description=f"{backend}: detector F1")
            results[backend].update(detector_f1(backend, frames, args))
            progress.advance(job)
    ref = results["torch"]
    rows = []
    for backend, r in results.items():
        cos = (r["vecs"] * ref["vecs"]).sum(axis=1)
        row = {
            "backend": backend,
            "load_and_warmup_s": r["load_and_warmup_s"],
            "short_per_s": r["short_per_s"],
            "long_per_s": r["long_per_s"],
            "all_per_s": r["all_per_s"],
            "ratio_short": r["short_per_s"] / ref["short_per_s"],
            "ratio_long": r["long_per_s"] / ref["long_per_s"],
            "ratio_all": r["all_per_s"] / ref["all_per_s"],
            "cos_min": float(cos.min()),
            "cos_mean": float(cos.mean()),
        }
        for key in ("xstest_refusal_f1", "jbb_harmful_compliance_f1"):
            row[key] = r.get(key, float("nan"))
            row[f"delta_{key}"] = row[key] - ref.get(key, float("nan"))
        rows.append(row)
    note = (
        "Short texts: 300 HarmBench behaviours + 700 benign instructions; long: 500 JailbreakBench + 500 XSTest responses "
        "(truncated at 256 tokens by every backend). F1: heads refitted per backend, 5-fold grouped cross-fit."
    )
    report = {
        "machine": machine,
        "threads": args.threads,
        "texts": {"short": len(short), "long": len(long), "warmup": len(warmup)},
        "backends": rows,
        "note": note,
    }
    (args.out / "embedding.json").write_text(json.dumps(report, indent=2))
    (args.out / "embedding.md").write_text(markdown(report))
    table = Table(
        "backend",
        "short/s",
        "long/s",
        "all/s",
        "× torch short/long/all",
        "cos min/mean",
        "XSTest refusal F1 (Δ)",
        "JBB harmful F1 (Δ)",
        title=f"embedding backends ({args.threads} threads)",
    )
    for row in rows:
        table.add_row(
            row["backend"],
            f"{row['short_per_s']:.1f}",
            f"{row['long_per_s']:.1f}",
            f"{row['all_per_s']:.1f}",
            f"{row['ratio_short']:.2f} / {row['ratio_long']:.2f} / {row['ratio_all']:.2f}",
            f"{row['cos_min']:.4f} / {row['cos_mean']:.4f}",
            f"{row['xstest_refusal_f1']:.3f} ({row['delta_xstest_refusal_f1']:+.3f})",
            f"{row['jbb_harmful_compliance_f1']:.3f} ({row['delta_jbb_harmful_compliance_f1']:+.3f})",
        )
    console.print(table)
    console.print(f"wrote {args.out / 'embedding.md'} and {args.out / 'embedding.json'}")


if __name__ == "__main__":
    main()
