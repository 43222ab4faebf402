"""The judge cascade's accuracy and cost on JailbreakBench: heads decide the confident answers,
Llama Guard 1 (its recorded verdicts) the uncertain ones, against JailbreakBench's judge labels.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/judge.py --data ../shared/datasets [--out bench/out/judge]

What is measured, and how nothing is tuned on the rows it reports:
- the answers are JailbreakBench's (deduplicated, as the shipped heads' recipe loads them, in
  `pipeline/lab/defaults.py`), grouped by attack method (GCG, JailbreakChat, PAIR);
- the attack score and the head verdict are the cascade's (`pipeline/lab/card.py`: attack score
  = mean(harmful compliance, 1 - refusal); attack success = refusal under its threshold);
- reported rows: each method m is scored by the three heads (harmful compliance, prompt harm,
  refusal) refitted on the recipe's rows without m's answers;
- band choice, nested: m's band is chosen on a band table built like the card's (symmetric bands
  around 0.5, `pipeline/lab/card.py` `band_table`) on the OTHER methods' answers, each m' != m
  scored by heads refitted without both m and m'. So m's labels train no head and pick no band
  that m's figures come from; the band then applies to m's answers as they are. Two rules pick
  the band from that table:
  - target accuracy, the cascade's own (`pipeline/judge/cascade.py`): the narrowest band whose
    heads' accuracy outside reaches the target (`SAFEMON_JUDGE_TARGET_ACCURACY`); where no band
    does, the cascade refuses to start, and the target has no pooled figure;
  - judge share, a budget: the narrowest band holding at least that share of the other methods'
    answers (it reads no label at all).
- Llama Guard 1 decides inside the band; an answer it has no verdict for counts as wrong (the
  cascade leaves it unscored). Head-only and Llama-Guard-1-only accuracies are on the same rows.
  Intervals: percentile bootstrap over answers (`binary_metrics`), and for the differences a
  paired bootstrap with McNemar's exact test (`paired_accuracy`).
- the "fixed bands" curve scores every band of the card's grid on all held-out answers: it is
  the card's own table, descriptive, not a choice; the chart shows it beside the nested curves.

Prints the figures as tables and writes `judge.json` and `judge_curve.png` to `--out`. The
embeddings of the recipe's texts are cached there (`embeddings_*.npz`) across runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from pipeline.judge.cascade import band_for_accuracy, band_for_share

ROOT = Path(__file__).resolve().parents[1]
TARGETS = tuple(round(0.84 + 0.02 * k, 2) for k in range(8))  # 0.84 .. 0.98
SHARES = tuple(round(0.05 * k, 2) for k in range(1, 11))  # 0.05 .. 0.50
COST_TARGET = 0.30  # the issue's goal: Llama Guard 1's accuracy with at most this share sent to the judge
console = Console()
if not console.is_terminal:
    console.width = 170  # the tables, unwrapped, in a log


def recipe_rows(data: Path, backend: str, out: Path) -> tuple[Any, pd.DataFrame, dict[str, np.ndarray], Any]:
    """The shipped recipe's detector heads, training frame and feature blocks (embeddings cached in `out`)."""
    from pipeline.detectors.embedder import get_embedder
    from pipeline.detectors.stack import DetectorStack
    from pipeline.lab.defaults import detector_frame, label_refusals
    from pipeline.lab.training import embed_frame, fit_heads

    embedder = get_embedder(backend=backend, cache_size=0)
    frame, _ = detector_frame(data)
    digest = hashlib.sha256("\x00".join(frame["prompt"].astype(str) + "\x01" + frame["response"].astype(str)).encode()).hexdigest()[:16]
    cache = out / f"embeddings_{embedder.vectors_id}_{digest}.npz"
    if cache.exists():
        with np.load(cache) as stored:
            parts = {k: stored[k] for k in stored.files}
    else:
        with console.status(f"embedding {len(frame)} rows of the recipe ({backend})"):
            parts = embed_frame(DetectorStack(embedder), frame)
        np.savez(cache, **parts)
    frame = label_refusals(frame, parts, embedder)
    heads = fit_heads(frame, parts, model=embedder.model_name, group_by="goal")
    return heads, frame, parts, embedder


def fold_scores(heads: Any, frame: pd.DataFrame, parts: dict[str, np.ndarray], embedder: Any) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Every method's answers scored by heads fitted without it, and per method m the other methods'
    answers scored by heads fitted without m and without each of them (the band-choice tables)."""
    from pipeline.lab.card import held_out_scores

    methods = sorted(frame.loc[frame["source"] == "jailbreakbench", "method"].unique())
    with Progress(console=console) as progress:
        task = progress.add_task("refitting the heads per held-out method", total=1 + len(methods))
        outer = held_out_scores(heads, frame, parts, embedder)
        progress.advance(task)
        inner = {}
        for method in methods:
            inner[method] = held_out_scores(heads, frame, parts, embedder, without=(method,))
            progress.advance(task)
    return outer, inner


def accuracy(truth: np.ndarray, verdict: np.ndarray) -> float:
    return float((verdict == truth).mean())


def guard_verdicts(scores: pd.DataFrame) -> np.ndarray:
    """Llama Guard 1 alone; -1 (wrong) where it has no verdict."""
    return np.nan_to_num(scores["guard"].to_numpy(dtype=float), nan=-1).astype(int)


RULES = {"target_accuracy": band_for_accuracy, "judge_share": band_for_share}


def nested_curve(outer: pd.DataFrame, inner: dict[str, pd.DataFrame], rule: str, knobs: tuple[float, ...], n_boot: int) -> list[dict[str, Any]]:
    """Per knob (a target accuracy, or a share for the judge): each method's band chosen by `rule` on the
    other methods' table, applied to its answers; pooled figures where every method has a band."""
    from pipeline.lab.card import band_table, cascade_verdicts
    from pipeline.lab.evaluation import binary_metrics, paired_accuracy

    tables = {m: band_table(rows) for m, rows in inner.items()}
    curve = []
    for knob in knobs:
        methods, verdicts, inside = {}, [], []
        for method, rows in outer.groupby("method", sort=True):
            band = RULES[rule](tables[method], knob)
            if band is None:  # the cascade refuses to start (BandError): no figure for this knob
                methods[method] = {"band": None}
                continue
            truth, v = rows["truth"].to_numpy(), cascade_verdicts(rows, band["low"], band["high"])
            s = rows["attack_score"].to_numpy()
            routed = (s >= band["low"]) & (s < band["high"])
            methods[method] = {
                "band": [band["low"], band["high"]],
                "chosen_on": {"share": band["share"], "accuracy_outside": band["accuracy_outside"]},
                "n": len(rows),
                "share": round(float(routed.mean()), 4),
                "accuracy": round(accuracy(truth, v), 4),
                "head_accuracy_outside": round(accuracy(truth[~routed], rows["head_verdict"].to_numpy()[~routed]), 4) if (~routed).any() else None,
            }
            verdicts.append(v), inside.append(routed)
        row: dict[str, Any] = {"knob": knob, "methods": methods, "complete": all(m["band"] is not None for m in methods.values())}
        if row["complete"]:
            truth, v = outer["truth"].to_numpy(), np.concatenate(verdicts)
            row |= {
                "share": round(float(np.concatenate(inside).mean()), 4),
                "accuracy": binary_metrics(truth, v, n_boot=n_boot)["accuracy"],
                "minus_llama_guard1": paired_accuracy(truth, v, guard_verdicts(outer), n_boot=n_boot),
                "minus_heads": paired_accuracy(truth, v, outer["head_verdict"].to_numpy(), n_boot=n_boot),
            }
        curve.append(row)
    return curve


def baselines(outer: pd.DataFrame, n_boot: int) -> dict[str, Any]:
    """Heads alone and Llama Guard 1 alone, pooled and per method."""
    from pipeline.lab.evaluation import binary_metrics

    def both(rows: pd.DataFrame) -> dict[str, Any]:
        truth = rows["truth"].to_numpy()
        return {
            "n": len(rows),
            "heads": binary_metrics(truth, rows["head_verdict"].to_numpy(), n_boot=n_boot)["accuracy"],
            "llama_guard1": binary_metrics(truth, guard_verdicts(rows), n_boot=n_boot)["accuracy"],
            "llama_guard1_missing": int(rows["guard"].isna().sum()),
        }

    return {"pooled": both(outer), "methods": {m: both(rows) for m, rows in outer.groupby("method", sort=True)}}


def agreement(outer: pd.DataFrame) -> dict[str, Any]:
    """What the audit would measure on these answers: how often the heads' verdict agrees with
    Llama Guard 1's outside the shipped default band (the confident verdicts the audit samples),
    and inside it (the verdicts the judge decides), each with a Wilson 95% interval."""
    from pipeline.detectors.shipped import CARD_FILE, shipped_path
    from pipeline.stats.proportions import category_stat

    row = band_for_share(json.loads(shipped_path(CARD_FILE).read_text())["cascade"]["bands"], 0.3)
    inside = (outer["attack_score"] >= row["low"]) & (outer["attack_score"] < row["high"])
    rated = outer["guard"].notna()
    agrees = outer["head_verdict"].to_numpy() == np.nan_to_num(outer["guard"].to_numpy(dtype=float), nan=-1)

    def stat(mask: pd.Series) -> dict[str, Any]:
        s = category_stat("agreement", int(agrees[mask & rated].sum()), int((mask & rated).sum()))
        return {"n": s.n, "agreed": s.successes, "rate": s.rate, "ci": [s.ci_low, s.ci_high]}

    per_method = {m: stat(~inside & (outer["method"] == m)) for m in sorted(outer["method"].unique())}
    return {"band": [row["low"], row["high"]], "outside": stat(~inside), "inside": stat(inside), "outside_by_method": per_method}


def cheapest_match(curve: list[dict[str, Any]], guard_accuracy: float) -> dict[str, Any] | None:
    """The smallest pooled share at which a nested curve's accuracy reaches Llama Guard 1's own."""
    hits = [r for r in curve if r["complete"] and r["accuracy"]["value"] >= guard_accuracy]
    best = min(hits, key=lambda r: r["share"], default=None)
    if best is None:
        return None
    return {"knob": best["knob"], "share": best["share"], "accuracy": best["accuracy"], "within_cost_target": best["share"] <= COST_TARGET}


CURVE_STYLE = {
    "target_accuracy": ("C0", "o", "cascade rule: target accuracy chosen on other methods"),
    "judge_share": ("C1", "s", "judge share chosen on other methods"),
}


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    pooled = report["baselines"]["pooled"]
    fixed = report["fixed_bands"]
    xs = [0] + [r["share"] for r in fixed]
    ys = [pooled["heads"]["value"]] + [r["cascade_accuracy_llama_guard1"] for r in fixed]
    ax.plot(xs, ys, color="0.65", marker=".", label="fixed bands around 0.5 (every band; descriptive, not chosen)")
    for rule, curve in report["curves"].items():
        color, marker, label = CURVE_STYLE[rule]
        nested = [r for r in curve if r["complete"]]
        if not nested:
            continue
        xs, ys = [r["share"] for r in nested], [r["accuracy"]["value"] for r in nested]
        err = [[r["accuracy"]["value"] - r["accuracy"]["ci"][0] for r in nested], [r["accuracy"]["ci"][1] - r["accuracy"]["value"] for r in nested]]
        ax.errorbar(xs, ys, yerr=err, color=color, marker=marker, capsize=3, linestyle="-", label=f"{label} (95% CI)")
        for r, x, y in zip(nested, xs, ys, strict=True):
            ax.annotate(f"{r['knob']:.2f}", (x, y), textcoords="offset points", xytext=(4, -11), fontsize=7, color=color)
    ax.axhline(pooled["llama_guard1"]["value"], color="C3", linestyle="--", label=f"Llama Guard 1 alone ({pooled['llama_guard1']['value']:.3f})")
    ax.axhline(pooled["heads"]["value"], color="C2", linestyle=":", label=f"heads alone ({pooled['heads']['value']:.3f})")
    ax.axvline(COST_TARGET, color="0.8", linewidth=1)
    ax.set_xlabel("share of answers sent to the judge")
    ax.set_ylabel("accuracy vs JailbreakBench's judge")
    ax.set_xlim(0, 1)
    ax.set_title(f"Judge cascade on JailbreakBench, attack methods held out ({pooled['n']} answers)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def ci_text(m: dict[str, Any]) -> str:
    return f"{m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]"


KNOB_TITLES = {"target_accuracy": "target accuracy", "judge_share": "judge share"}


def print_curve(report: dict[str, Any], rule: str) -> None:
    pooled = report["baselines"]["pooled"]
    knob = KNOB_TITLES[rule]
    table = Table(title=f"Cascade per {knob} (band chosen on the other methods), pooled over held-out methods ({pooled['n']} answers)")
    for column in (knob, "share to judge", "cascade accuracy (95% CI)", "cascade − LG1 (paired, McNemar p)", "cascade − heads"):
        table.add_column(column, justify="right")
    for r in report["curves"][rule]:
        if not r["complete"]:
            missing = ", ".join(m for m, v in r["methods"].items() if v["band"] is None)
            table.add_row(f"{r['knob']:.2f}", f"no band for {missing}", "", "", "")
            continue
        d, h = r["minus_llama_guard1"], r["minus_heads"]
        table.add_row(
            f"{r['knob']:.2f}",
            f"{r['share']:.3f}",
            ci_text(r["accuracy"]),
            f"{d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] p={d['mcnemar_p']:.2g}",
            f"{h['value']:+.3f} [{h['ci'][0]:+.3f}, {h['ci'][1]:+.3f}]",
        )
    console.print(table)

    per = Table(title=f"Per held-out method, per {knob}: band chosen on the other methods' answers, applied to this method's")
    for column in (knob, "method", "n", "band", "share", "cascade", "heads outside", "heads alone", "LG1 alone"):
        per.add_column(column, justify="right")
    for r in report["curves"][rule]:
        for method, m in r["methods"].items():
            base = report["baselines"]["methods"][method]
            if m["band"] is None:
                per.add_row(f"{r['knob']:.2f}", method, str(base["n"]), "none", "", "", "", "", "")
                continue
            outside = "" if m["head_accuracy_outside"] is None else f"{m['head_accuracy_outside']:.3f}"
            band = f"[{m['band'][0]:.2f}, {m['band'][1]:.2f})"
            per.add_row(
                f"{r['knob']:.2f}",
                method,
                str(m["n"]),
                band,
                f"{m['share']:.3f}",
                f"{m['accuracy']:.3f}",
                outside,
                ci_text(base["heads"]),
                ci_text(base["llama_guard1"]),
            )
    console.print(per)


def print_report(report: dict[str, Any]) -> None:
    pooled = report["baselines"]["pooled"]
    console.print(
        f"heads alone {ci_text(pooled['heads'])}; Llama Guard 1 alone {ci_text(pooled['llama_guard1'])} ({pooled['llama_guard1_missing']} without a verdict)"
    )
    for rule in report["curves"]:
        print_curve(report, rule)
    fixed = Table(title="Every band of the card's grid on all held-out answers (descriptive: no band is chosen here)")
    for column in ("band", "share to judge", "heads' accuracy outside", "cascade accuracy"):
        fixed.add_column(column, justify="right")
    for r in report["fixed_bands"]:
        fixed.add_row(f"[{r['low']:.2f}, {r['high']:.2f})", f"{r['share']:.3f}", f"{r['accuracy_outside']:.3f}", f"{r['cascade_accuracy_llama_guard1']:.3f}")
    console.print(fixed)
    for rule, match in report["cheapest_match_of_llama_guard1"].items():
        knob = KNOB_TITLES[rule]
        if match is None:
            console.print(f"{knob}: no setting reaches Llama Guard 1's accuracy ({pooled['llama_guard1']['value']:.3f}) on methods it was not chosen on")
            continue
        verdict = "within" if match["within_cost_target"] else "over"
        console.print(
            f"{knob}: the cascade reaches Llama Guard 1's accuracy ({pooled['llama_guard1']['value']:.3f}) at {knob} {match['knob']:.2f}: "
            f"{match['share']:.1%} of answers to the judge, accuracy {ci_text(match['accuracy'])} ({verdict} the {COST_TARGET:.0%} goal)"
        )
    a = report["agreement"]

    def rate(x: dict[str, Any]) -> str:
        return f"{x['rate']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}] (n={x['n']})"

    console.print(
        f"head-Llama Guard 1 agreement outside the default band [{a['band'][0]:.2f}, {a['band'][1]:.2f}) (what the audit measures): {rate(a['outside'])}; "
        f"inside it: {rate(a['inside'])}; outside, per method: " + ", ".join(f"{m} {rate(x)}" for m, x in a["outside_by_method"].items())
    )
    seconds = report["seconds"]
    console.print(
        f"took {seconds['total']:.0f}s (rows and embeddings {seconds['rows']:.0f}s, refits {seconds['refits']:.0f}s, figures {seconds['figures']:.0f}s)"
    )


def main() -> None:
    from pipeline.lab.defaults import BACKEND

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "judge")
    parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS), help="target accuracies (SAFEMON_JUDGE_TARGET_ACCURACY values)")
    parser.add_argument("--shares", type=float, nargs="+", default=list(SHARES), help="shares of answers for the judge (the budget rule)")
    parser.add_argument("--backend", default=BACKEND, help="embedding backend (default: the shipped heads' fitting backend)")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples per interval")
    args = parser.parse_args()

    from pipeline.lab.card import band_table
    from pipeline.logs import configure_logging

    configure_logging("WARNING")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    heads, frame, parts, embedder = recipe_rows(args.data, args.backend, args.out)
    rows_s = time.perf_counter() - started
    outer, inner = fold_scores(heads, frame, parts, embedder)
    refits_s = time.perf_counter() - started - rows_s
    base = baselines(outer, args.boot)
    curves = {
        "target_accuracy": nested_curve(outer, inner, "target_accuracy", tuple(args.targets), args.boot),
        "judge_share": nested_curve(outer, inner, "judge_share", tuple(args.shares), args.boot),
    }
    guard = base["pooled"]["llama_guard1"]["value"]
    total = time.perf_counter() - started
    report = {
        "backend": args.backend,
        "rows": len(outer),
        "methods": {m: int(n) for m, n in outer["method"].value_counts().sort_index().items()},
        "baselines": base,
        "curves": curves,
        "cheapest_match_of_llama_guard1": {rule: cheapest_match(curve, guard) for rule, curve in curves.items()},
        "fixed_bands": band_table(outer),
        "agreement": agreement(outer),
        "seconds": {"rows": rows_s, "refits": refits_s, "figures": total - rows_s - refits_s, "total": total},
    }
    (args.out / "judge.json").write_text(json.dumps(report, indent=1))
    chart(report, args.out / "judge_curve.png")
    print_report(report)
    console.print(f"wrote {args.out / 'judge.json'} and {args.out / 'judge_curve.png'}")


if __name__ == "__main__":
    main()
