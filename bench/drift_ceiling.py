"""How much power on direct harmful requests `bench/eval_drift.py`'s windows allow at all.

    .venv/bin/python bench/drift_ceiling.py [--data ../shared/datasets] [--trials 2000]

The drift bench's benign windows are drawn from 6,264 instructions and 1,909 HH-RLHF human
turns. Those turns are red-team attempts, and many of them are harmful requests of the same
kind as the injected `direct` rows (HarmBench behaviours as plain requests). A detector that
flags harmful requests flags them too, so the windows' baseline already holds what the
injection adds more of.

This bench bounds what any detector can reach there. Each row is flagged or not, and a
one-sided two-proportion test (statsmodels) compares the current window's flagged share with
the reference's, with the drift bench's window design (reference 3 x n rows, disjoint from the
window, α = 0.01). Detectors:
- ideal: flags every injected request, no instruction, and exactly the HH turns that are harmful
  requests; the share of those comes from `data/hh_red_team_sample.csv` (`turn` indexes the
  drift bench's list of HH turns): 60 turns drawn with the seed below and labelled by one
  annotator, a safemon developer, without seeing any score (`harmful_request`: asks for harmful
  help or hateful content; `harmful_or_bait`: also hostile bait and follow-ups of a harmful
  thread). The table reads the share's Wilson interval as well as its point;
- the shipped attack head at its threshold, on the very rows (int8 vectors, cached with the
  drift bench's cache).
A count test is what a binary detector allows; the hourly check's test weighs rows by their
likelihood ratio, which `eval_drift.py` measures.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from statsmodels.stats.proportion import proportion_confint, proportions_ztest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from eval_drift import RATES, draw_window, embed_all, load_texts  # noqa: E402

SAMPLE = ROOT / "bench" / "data" / "hh_red_team_sample.csv"
SAMPLE_SEED, SAMPLE_SIZE = 20261204, 60
SIZES = (500, 2000)
REFERENCE_MULTIPLE = 3


def labelled_sample(n_turns: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The labelled turns' indices and their hand labels, checked against the draw they were made on."""
    with SAMPLE.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    drawn = np.random.default_rng(SAMPLE_SEED).choice(n_turns, SAMPLE_SIZE, replace=False)
    if [int(r["turn"]) for r in rows] != drawn.tolist():
        raise SystemExit(f"{SAMPLE} does not hold the turns drawn with seed {SAMPLE_SEED} from {n_turns} turns")
    return drawn, {k: np.array([int(r[k]) for r in rows]) for k in ("harmful_request", "harmful_or_bait")}


def power(benign: np.ndarray, attack: np.ndarray, n: int, rate: float, trials: int, alpha: float, rng: np.random.Generator) -> float:
    """Share of trials whose window's flagged share exceeds its reference's at `alpha`.

    `benign` and `attack` are 0/1 flags per pool row; each trial draws its rows as the drift
    bench does (`draw_window`): a reference of REFERENCE_MULTIPLE x n benign rows and, disjoint
    from it, a window of n rows of which round(rate x n) are attacks."""
    m, k = REFERENCE_MULTIPLE * n, round(rate * n)
    alarms = 0
    for _ in range(trials):
        ref_rows, cur_rows, attack_rows = draw_window(rng, len(benign), n, m, k, len(attack))
        ref = int(benign[ref_rows].sum())
        cur = int(benign[cur_rows].sum()) + int(attack[attack_rows].sum())
        if ref + cur == 0:
            continue
        _, p = proportions_ztest([cur, ref], [n, m], alternative="larger")
        alarms += bool(p < alpha)
    return alarms / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="where the drift bench's embedding cache is")
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from pipeline.detectors.embedder import get_embedder
    from pipeline.detectors.shipped import load_drift_head
    from pipeline.drift.attacks import AttackProfile
    from pipeline.logs import configure_logging
    from pipeline.settings import DEFAULT_BACKEND, Settings

    configure_logging("WARNING")
    console = Console()
    texts = load_texts(args.data)
    n_hh = texts["_counts"]["hh_eval"]
    n_instructions = len(texts["benign_eval"]) - n_hh  # the pool is the instructions, then the HH turns
    drawn, labels = labelled_sample(n_hh)

    args.out.mkdir(parents=True, exist_ok=True)
    vecs = embed_all(texts, args.out, DEFAULT_BACKEND)
    profile = AttackProfile.builtin(get_embedder(backend=DEFAULT_BACKEND), load_drift_head(Settings()))
    flags = {k: (profile.score(vecs[k]) >= profile.threshold).astype(int) for k in ("benign_eval", "direct")}

    shares: dict[str, float] = {}
    for name, y in labels.items():
        lo, hi = proportion_confint(int(y.sum()), len(y), method="wilson")
        shares |= {f"{name} {y.mean():.2f}": float(y.mean()), f"{name} CI low {lo:.2f}": lo, f"{name} CI high {hi:.2f}": hi}
        console.print(f"HH turns labelled {name}: {int(y.sum())} of {len(y)} = {y.mean():.2f} [{lo:.2f}, {hi:.2f}] (Wilson 95%)")
    shipped = flags["benign_eval"]
    on_sample = shipped[n_instructions:][drawn]
    harmful = labels["harmful_request"] == 1
    console.print(
        f"shipped head flags: instructions {shipped[:n_instructions].mean():.3f}, HH turns {shipped[n_instructions:].mean():.3f}, "
        f"direct requests {flags['direct'].mean():.3f}; labelled turns: {on_sample[harmful].sum()} of {harmful.sum()} harmful requests, "
        f"{on_sample[~harmful].sum()} of {(~harmful).sum()} others"
    )

    rng = np.random.default_rng(args.seed)
    detectors: dict[str, tuple[np.ndarray, np.ndarray]] = {"shipped head's flags": (shipped, flags["direct"])}
    for name, share in {"no harmful HH turn": 0.0, **shares}.items():
        harmful_turns = (rng.random(n_hh) < share).astype(int)
        detectors[f"ideal, HH share {name}"] = (np.concatenate([np.zeros(n_instructions, int), harmful_turns]), np.ones(len(flags["direct"]), int))

    cells = [(n, rate) for n in SIZES for rate in (0.0, *RATES)]
    table = Table(
        title=f"count-test power on direct requests (α = {args.alpha}, reference {REFERENCE_MULTIPLE} x n, {args.trials} trials a cell; rate 0: false alarms)"
    )
    table.add_column("detector")
    for n, rate in cells:
        table.add_column(f"{rate:.0%} / {n}", justify="right")
    with Progress(console=console) as progress:
        task = progress.add_task("trials", total=len(detectors) * len(cells))
        for name, (benign, attack) in detectors.items():
            row = []
            for n, rate in cells:
                row.append(f"{power(benign, attack, n, rate, args.trials, args.alpha, rng):.3f}")
                progress.advance(task)
            table.add_row(name, *row)
    console.print(table)


if __name__ == "__main__":
    main()
