"""drift commands of the `safemon` CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.checks.findings import CheckStatus

if TYPE_CHECKING:
    from rich.table import Table

    from pipeline.checks.drift import Comparison
    from pipeline.drift.explain import Explanation

drift_app = typer.Typer(help="Embedding drift tests.", no_args_is_help=True)


def read_texts(path: Path) -> list[str]:
    """The `text` field of every line of a JSONL file; a line without one is an error naming it."""
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f"{path}:{number}: needs a string field 'text'")
        texts.append(record["text"])
    return texts


def _table(comparison: Comparison, n_ref: int, n_cur: int) -> Table:
    from rich.table import Table

    table = Table("method", "statistic", "p", "p_adj (Holm)", "effect", "drifted", title=f"reference n={n_ref} vs current n={n_cur}")
    for r in comparison.results:
        p_adj = comparison.p_adjusted.get(r.method)
        table.add_row(
            r.method,
            f"{r.statistic:.4g}",
            f"{r.p_value:.3g}",
            "" if p_adj is None else f"{p_adj:.3g}",
            f"{r.effect_size:.3g}",
            "yes" if r.method in comparison.drifted else "no",
        )
    return table


def _as_json(comparison: Comparison, explanation: Explanation, n_ref: int, n_cur: int) -> dict:
    return {
        "status": CheckStatus.CHECKED,
        "n_reference": n_ref,
        "n_current": n_cur,
        "drifted": list(comparison.drifted),
        "results": [
            {
                "method": r.method,
                "statistic": r.statistic,
                "p_value": None if r.p_value != r.p_value else r.p_value,
                "p_adjusted": comparison.p_adjusted.get(r.method),
                "effect_size": r.effect_size,
            }
            for r in comparison.results
        ],
        "explanation": {**explanation.to_dict(), "current_rows": [int(i) for i in explanation.sample_ids]},
    }


@drift_app.command("test")
def drift_test(
    reference: Annotated[Path, typer.Option(help="Reference texts (JSONL with a `text` field)", exists=True, dir_okay=False)],
    current: Annotated[Path, typer.Option(help="Current texts (JSONL with a `text` field)", exists=True, dir_okay=False)],
    method: Annotated[list[str] | None, typer.Option(help="mmd, c2st, attack_share or centroid; repeat for several (default: mmd)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here")] = None,
    head: Annotated[Path | None, typer.Option(help="A fitted attack head (.npz) for attack_share (default: the settings' head, else the shipped one)")] = None,
    seed: Annotated[int, typer.Option(help="Seed for permutations and folds")] = 0,
) -> None:
    """A one-off drift test between two files of texts."""
    from rich.console import Console

    from pipeline.checks.drift import compare
    from pipeline.detectors.embedder import embedder_from_settings
    from pipeline.drift.attacks import AttackHead, AttackProfile
    from pipeline.drift.explain import explain
    from pipeline.drift.methods import DRIFT_METHODS, DriftInputError, clean_embeddings
    from pipeline.settings import get_settings

    console, err = Console(), Console(stderr=True)
    methods = method or ["mmd"]
    settings = get_settings()
    try:
        for name in methods:
            DRIFT_METHODS.get(name)
        ref_texts, cur_texts = read_texts(reference), read_texts(current)
    except (KeyError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc.args[0]}")
        raise typer.Exit(2) from None
    embedder = embedder_from_settings(settings)
    with console.status(f"embedding {len(ref_texts) + len(cur_texts)} texts"):
        ref_vecs = clean_embeddings(embedder.encode(ref_texts), "reference")[0] if ref_texts else None
        cur_vecs = clean_embeddings(embedder.encode(cur_texts), "current")[0] if cur_texts else None
    n_ref, n_cur = (0 if v is None else len(v) for v in (ref_vecs, cur_vecs))
    if min(n_ref, n_cur) < settings.drift_min_samples:
        console.print(f"insufficient_data: reference n={n_ref}, current n={n_cur}, need {settings.drift_min_samples} each")
        if json_out:
            json_out.write_text(json.dumps({"status": CheckStatus.INSUFFICIENT_DATA, "n_reference": n_ref, "n_current": n_cur}))
        raise typer.Exit(3)
    from pipeline.detectors.shipped import load_drift_head

    attacks = AttackProfile.builtin(embedder, AttackHead.load(head) if head else load_drift_head(settings))
    try:
        comparison = compare(
            ref_vecs,
            cur_vecs,
            methods,
            alpha=settings.drift_alpha,
            min_effect=settings.drift_min_effect,
            permutations=settings.drift_permutations,
            seed=seed,
            attacks=attacks,
        )
    except DriftInputError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    witness = next((r.details.get("witness") for r in comparison.results if r.method == "mmd"), None)
    explanation = explain(ref_vecs, cur_vecs, attacks, witness=witness, current_ids=[str(i) for i in range(n_cur)])
    table = _table(comparison, n_ref, n_cur)
    console.print(table)
    if explanation.summary():
        console.print(explanation.summary())
    if json_out:
        json_out.write_text(json.dumps(_as_json(comparison, explanation, n_ref, n_cur), indent=2, default=float))
    raise typer.Exit(1 if comparison.drifted else 0)


@drift_app.command("fit-head")
def drift_fit_head(
    attacks: Annotated[Path, typer.Option(help="Attack texts (JSONL with a `text` field)", exists=True, dir_okay=False)],
    benign: Annotated[Path, typer.Option(help="Benign texts like your normal traffic (JSONL with a `text` field)", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option(help="Where to write the head (.npz); point SAFEMON_DRIFT_ATTACK_HEAD at it")],
    hidden: Annotated[list[int] | None, typer.Option(help="Hidden layer size; repeat for more layers, 0 = a logistic head")] = None,
    target_fpr: Annotated[float, typer.Option(min=0.0001, max=0.5, help="Share of held-out benign texts allowed above the threshold")] = 0.005,
    seed: Annotated[int, typer.Option(help="Seed for the held-out split and the fit")] = 0,
) -> None:
    """Fit the attack head behind the targeted drift test (attack_share) on your own texts.

    Keep the texts disjoint from anything you will evaluate the head on.
    """
    from rich.console import Console

    from pipeline.detectors.embedder import embedder_from_settings
    from pipeline.drift.attacks import fit_head
    from pipeline.settings import get_settings

    console = Console()
    try:
        attack_texts, benign_texts = read_texts(attacks), read_texts(benign)
    except ValueError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc.args[0]}")
        raise typer.Exit(2) from None
    settings = get_settings()
    embedder = embedder_from_settings(settings)
    with console.status(f"embedding {len(attack_texts) + len(benign_texts)} texts"):
        attack_vecs, benign_vecs = embedder.encode(attack_texts), embedder.encode(benign_texts)
    layers = tuple(h for h in (hidden or [256]) if h > 0)
    head = fit_head(
        attack_vecs,
        benign_vecs,
        hidden=layers,
        target_fpr=target_fpr,
        seed=seed,
        sources={"attacks": str(attacks), "benign": str(benign), "model": embedder.model_name},
    )
    head.save(out)
    console.print(f"wrote {out}: threshold {head.threshold:.3f}, held-out tpr {head.tpr:.3f}, fpr {head.fpr:.4f}")


@drift_app.command("calibrate")
def drift_calibrate(
    benign: Annotated[
        Path, typer.Option(help="Benign traffic of this deployment: CSV or JSONL with user_text (a sample_scores export) or prompt", exists=True)
    ],
    target_fpr: Annotated[float, typer.Option(help="Share of benign user turns the attack head may flag")] = 0.005,
    out: Annotated[Path | None, typer.Option(help="The calibration overlay to write (default: SAFEMON_CALIBRATION, else calibration.json)")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the calibration / held-out split")] = 0,
) -> None:
    """Set the attack head's threshold for a target false-positive rate on this deployment's benign user turns.

    Run it after onboarding a target and after each model_version change. The head's recorded
    true-positive rate is kept: benign traffic cannot measure it.
    """
    from rich.console import Console

    from pipeline.detectors.embedder import embedder_from_settings
    from pipeline.detectors.shipped import load_drift_head, write_calibration
    from pipeline.lab.calibration import calibrate, describe, file_entry, overlay_path, read_traffic
    from pipeline.settings import get_settings

    console, err = Console(), Console(stderr=True)
    settings = get_settings()
    head = load_drift_head(settings.model_copy(update={"calibration": None}))
    try:
        if head is None:
            raise ValueError("calibration sets the attack head's threshold, and no attack head is in use (SAFEMON_DETECTOR_DEFAULTS=exemplars?)")
        prompts = read_traffic(benign, responses=False)["prompt"].tolist()
        with console.status(f"embedding {len(prompts)} user turns"):
            result = calibrate(head.score(embedder_from_settings(settings).encode(prompts)), target_fpr, seed=seed)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    path = overlay_path(out, settings)
    write_calibration(path, "drift", file_entry(benign, head.digest, result, threshold=result.threshold, tpr=head.tpr, fpr=result.measured_fpr))
    console.print(f"attack head: {describe(result)}")
    console.print(f"wrote {path}; set SAFEMON_CALIBRATION={path}")


def register(app: typer.Typer) -> None:
    """Add the drift commands to the main app."""
    app.add_typer(drift_app, name="drift")
