"""detectors commands of the `safemon` CLI: `safemon detectors fit` and `safemon eval detectors`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err = Console(stderr=True)

SPLIT_HELP = "Group key of the held-out split: prompt, type, goal, method, model, row; 'none' fits on every row"


def eval_group(app: typer.Typer) -> typer.Typer:
    """The `eval` sub-app, shared with other packages' evaluation commands."""
    for group in app.registered_groups:
        if group.name == "eval" and group.typer_instance is not None:
            return group.typer_instance
    sub = typer.Typer(help="Measure detectors and checks on labelled public data.", no_args_is_help=True)
    app.add_typer(sub, name="eval")
    return sub


STORE_HELP = "Fit on labels stored in ClickHouse instead of files (with --labels judge)"
LABELS_HELP = "Which stored labels: judge (the verdicts a judge gave, uncertain and audited rows)"


def fit(
    out: Annotated[Path, typer.Option(help="Where to write the head artifact (.npz)")],
    data: Annotated[list[Path] | None, typer.Option("--data", help="Labelled CSV/JSONL (or the XSTest folder); repeat for several", exists=True)] = None,
    split: Annotated[str, typer.Option(help=SPLIT_HELP)] = "prompt",
    data_format: Annotated[str | None, typer.Option("--format", help="xstest, jbb or qa (default: from the columns)")] = None,
    test_size: Annotated[float, typer.Option(help="Share of groups held out (not fitted on)")] = 0.3,
    seed: Annotated[int, typer.Option(help="Seed of the held-out draw")] = 0,
    from_store: Annotated[bool, typer.Option("--from-store", help=STORE_HELP)] = False,
    labels: Annotated[str, typer.Option(help=LABELS_HELP)] = "judge",
    since: Annotated[str, typer.Option(help="--from-store: how far back, e.g. 30d")] = "30d",
    holdout_days: Annotated[int, typer.Option(help="--from-store: the newest days held out of fitting, and measured on", min=1)] = 7,
    min_labels: Annotated[int, typer.Option(help="--from-store: fewer stored labels than this is an error", min=1)] = 200,
) -> None:
    """Fit detector heads on the training part of labelled data (files, or the judge's labels in
    the store) and save them as an artifact."""
    if from_store:
        if data:
            err.print("[red]error:[/red] give --data files or --from-store, not both")
            raise typer.Exit(2)
        fit_from_store(out, labels=labels, since=since, holdout_days=holdout_days, min_labels=min_labels)
        return
    if not data:
        err.print("[red]error:[/red] give --data (labelled files) or --from-store --labels judge")
        raise typer.Exit(2)
    import numpy as np
    import pandas as pd

    from pipeline.detectors.head import provenance_stamp
    from pipeline.detectors.stack import DetectorStack
    from pipeline.lab.evaluation import deduplicate, file_digest, holdout_mask, load_labelled
    from pipeline.lab.training import embed_frame, fit_heads
    from pipeline.settings import get_settings

    settings = get_settings()
    frames, sources = [], []
    for path in data:
        try:
            frame = deduplicate(load_labelled(path, data_format))
        except ValueError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        mask = np.zeros(len(frame), dtype=bool) if split == "none" else holdout_mask(frame, split, test_size, seed)
        sources.append(
            {"path": str(path), "sha256": file_digest(path), "format": frame["format"].iloc[0], "rows": len(frame), "fitted_rows": int((~mask).sum())}
        )
        frames.append(frame[~mask].assign(source=path.name))
    train = pd.concat(frames, ignore_index=True)
    stack = DetectorStack.from_settings(settings)
    with console.status(f"embedding {len(train)} rows"):
        parts = embed_frame(stack, train)
    provenance = provenance_stamp(data=sources, split={"by": split, "test_size": test_size, "seed": seed, "fitted_part": "train", "deduplicated": "response"})
    try:
        heads = fit_heads(train, parts, model=stack.embedder.model_name, group_by="row" if split == "none" else split, provenance=provenance)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    heads.save(out)
    _print_fitted(heads.provenance, out)


def _print_fitted(provenance: dict[str, Any], out: Path) -> None:
    for task, by_source in provenance["heads_fitted"].items():
        rows = ", ".join(f"{n} from {source}" for source, n in by_source.items())
        console.print(f"fitted {task} on {sum(by_source.values())} rows ({rows})")
    for task, why in provenance["heads_not_fitted"].items():
        console.print(f"[yellow]not fitted[/yellow] {task}: {why}")
    console.print(f"wrote {out}; set SAFEMON_DETECTOR_HEAD={out}")


def _stored_labels(labels: str, since: str) -> Any:
    """The judge-labelled rows of the store since `since` as a labelled frame (see `judge_frame`), and the start."""
    from datetime import UTC, datetime

    from pipeline.lab.evaluation import judge_frame
    from pipeline.report.page import parse_span
    from pipeline.settings import get_settings
    from pipeline.store.client import open_store
    from pipeline.store.labels import judge_labels

    if labels != "judge":
        raise ValueError(f"unknown --labels {labels!r}; valid: judge")
    start = datetime.now(UTC) - parse_span(since)
    with open_store(get_settings(), migrated=True) as client:
        return judge_frame(judge_labels(client, start)), start


def fit_from_store(out: Path, *, labels: str, since: str, holdout_days: int, min_labels: int) -> None:
    """Refit the harmful-compliance head (and prompt harm, where the labels define it) on the
    judge's stored verdicts, holding out the newest `holdout_days` days, on top of the heads in
    use; report both on the held-out days."""
    import numpy as np

    from pipeline.detectors.embedder import embedder_from_settings
    from pipeline.detectors.head import HeadSet, provenance_stamp
    from pipeline.detectors.shipped import load_head
    from pipeline.detectors.stack import DetectorStack
    from pipeline.lab.training import embed_frame, evaluate, fit_heads, predict_frame, take
    from pipeline.settings import get_settings

    try:
        frame, start = _stored_labels(labels, since)
        days = sorted(frame["day"].unique())
        if len(frame) < min_labels:
            raise ValueError(
                f"only {len(frame)} judge labels stored since {start:%Y-%m-%d %H:%M} UTC; at least {min_labels} are needed "
                "(configure a judge, wait for more audits, widen --since or lower --min-labels)"
            )
        if len(days) <= holdout_days:
            raise ValueError(f"the judge labels span {len(days)} day(s); holding out the newest {holdout_days} leaves none to fit on")
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    held = frame["day"].isin(days[-holdout_days:]).to_numpy()
    settings = get_settings()
    embedder = embedder_from_settings(settings)
    base = load_head(settings, embedder)
    stack = DetectorStack(embedder, head=base)
    with console.status(f"embedding {len(frame)} rows"):
        parts = embed_frame(stack, frame)
    fit_rows = np.flatnonzero(~held)
    provenance = provenance_stamp(
        labels="judge",
        since=start.isoformat(timespec="seconds"),
        judge_versions=sorted(frame["judge_version"].unique()),
        held_out_days=[str(d) for d in days[-holdout_days:]],
        rows_fitted=int(len(fit_rows)),
        rows_held_out=int(held.sum()),
        base_head=base.digest if base is not None else "exemplars",
    )
    try:
        refit = fit_heads(
            frame.iloc[fit_rows].reset_index(drop=True),
            take(parts, fit_rows),
            model=embedder.model_name,
            group_by="prompt",
            provenance=provenance,
            tasks=("harmful_compliance", "prompt_harm"),
        )
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    heads = HeadSet(heads={**(base.heads if base else {}), **refit.heads}, model=embedder.model_name, provenance=refit.provenance)
    heads.save(out)
    _print_fitted(heads.provenance, out)
    test_rows = np.flatnonzero(held)
    test = frame.iloc[test_rows].reset_index(drop=True)
    before = predict_frame(stack, test, take(parts, test_rows))["pred:harmful_compliance"].to_numpy()
    test["base:heads in use:harmful_compliance"] = before
    metrics = evaluate(test, predict_frame(DetectorStack(embedder, head=heads), test, take(parts, test_rows)))
    _print_metrics(metrics, f"held-out days {days[-holdout_days]}..{days[-1]} ({len(test)} judge labels)")


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    from pipeline.lab.evaluation import lead_text

    table = Table("task", "system", "n", "accuracy", "precision", "recall", "F1", "detector - this (paired)", title=title)
    for task, systems in metrics.items():
        for system, m in systems.items():
            cells = [f"{m[k]['value']:.3f} [{m[k]['ci'][0]:.2f}, {m[k]['ci'][1]:.2f}]" for k in ("accuracy", "precision", "recall", "f1")]
            n = f"{m['n']} ({m['missing']} rows lack it)" if m.get("missing") else str(m["n"])
            table.add_row(task, system, n, *cells, lead_text(m))
    console.print(table)


def held_out_rows(frame: Any, path: Path, provenance: dict[str, Any]) -> tuple[Any, str]:
    """The rows a head never saw: the recorded held-out part when it was fitted on this very file."""
    from pipeline.lab.evaluation import file_digest, holdout_mask

    digest = file_digest(path)
    if any(source.get("sha256") == digest for source in provenance.get("sources", [])):
        raise ValueError(f"the shipped heads were fitted on {path}; their held-out figures on it are in docs/model_card.md")
    for source in provenance.get("data", []):
        if source.get("sha256") == digest:
            split = provenance["split"]
            if split["by"] == "none":
                raise ValueError(f"the head was fitted on every row of {path}; evaluate it on other data")
            mask = holdout_mask(frame, split["by"], split["test_size"], split["seed"])
            return frame[mask], f"held-out part of the recorded split (by {split['by']}, test_size {split['test_size']}, seed {split['seed']})"
    return frame, "all rows (the head was not fitted on this file)"


def eval_detectors(
    data: Annotated[Path | None, typer.Option(help="Labelled file (or the XSTest folder)", exists=True)] = None,
    data_format: Annotated[str | None, typer.Option("--format", help="xstest, jbb or qa (default: from the columns)")] = None,
    detectors: Annotated[Path | None, typer.Option(help="Fitted head artifact (default: SAFEMON_DETECTOR_HEAD, else built-in)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics here as JSON")] = None,
    boot: Annotated[int, typer.Option(help="Bootstrap resamples per interval")] = 1000,
    from_store: Annotated[bool, typer.Option("--from-store", help="Score against labels stored in ClickHouse (with --labels judge)")] = False,
    labels: Annotated[str, typer.Option(help=LABELS_HELP)] = "judge",
    since: Annotated[str, typer.Option(help="--from-store: how far back, e.g. 30d")] = "30d",
) -> None:
    """Evaluate the detectors (and the file's baselines) on labelled responses, or on the judge's
    stored verdicts."""
    if (data is None) == (not from_store):
        err.print("[red]error:[/red] give --data FILE or --from-store --labels judge")
        raise typer.Exit(2)
    from pipeline.detectors.embedder import embedder_from_settings
    from pipeline.detectors.head import HeadError, HeadSet
    from pipeline.detectors.shipped import detector_head_path, load_head
    from pipeline.detectors.stack import DetectorStack
    from pipeline.lab.evaluation import deduplicate, load_labelled
    from pipeline.lab.training import embed_frame, evaluate, predict_frame
    from pipeline.settings import get_settings

    settings = get_settings()
    embedder = embedder_from_settings(settings)
    try:
        heads = HeadSet.load(detectors, expect_model=embedder.model_name) if detectors else load_head(settings, embedder)
        if data is None:
            rows, start = _stored_labels(labels, since)
            if rows.empty:
                raise ValueError(f"no judge labels stored since {start:%Y-%m-%d %H:%M} UTC")
            note = f"{len(rows)} judge labels stored since {start:%Y-%m-%d}"
        else:
            frame = deduplicate(load_labelled(data, data_format))
            rows, note = held_out_rows(frame, data, heads.provenance) if heads is not None else (frame, "all rows (built-in detectors)")
    except (HeadError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    rows = rows.reset_index(drop=True)
    stack = DetectorStack(embedder, head=heads)
    with console.status(f"scoring {len(rows)} rows"):
        metrics = evaluate(rows, predict_frame(stack, rows, embed_frame(stack, rows)), n_boot=boot)
    result = {
        "data": str(data) if data else f"store: {labels} labels since {since}",
        "format": rows["format"].iloc[0] if len(rows) else data_format,
        "rows": note,
        "detectors": str(detectors or detector_head_path(settings) or "built-in exemplars"),
        "tasks": metrics,
    }
    _print_metrics(metrics, f"{data.name if data else 'store'}: {note}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))


def build_defaults(
    data: Annotated[Path, typer.Option(help="The public datasets folder (../shared/datasets)", exists=True, file_okay=False)],
    out: Annotated[Path | None, typer.Option(help="Where to write the heads (default: the package's pipeline/detectors/defaults/)")] = None,
    card: Annotated[Path, typer.Option(help="Where to write the model card (Markdown)")] = Path("docs/model_card.md"),
    boot: Annotated[int, typer.Option(help="Bootstrap resamples per interval of the card")] = 1000,
) -> None:
    """Rebuild the shipped heads and their model card from the public datasets (deterministic)."""
    from pipeline.detectors.shipped import CARD_FILE, shipped_path
    from pipeline.lab.card import build_card, markdown
    from pipeline.lab.defaults import build

    target = out or shipped_path("")
    with console.status("embedding the recipe's texts and fitting the heads"):
        built = build(data, target)
    for name, path in built.written.items():
        console.print(f"wrote {path} ({name})")
    with console.status("cross-fitting the card's held-out figures"):
        figures = build_card(data, built.heads, built.frame, built.parts, built.drift, built.embedder, n_boot=boot)
    (target / CARD_FILE).write_text(json.dumps(figures, indent=1, sort_keys=True))
    card.parent.mkdir(parents=True, exist_ok=True)
    card.write_text(markdown(figures))
    console.print(f"wrote {target / CARD_FILE} and {card}")


BENIGN_HELP = "Benign traffic of this deployment: CSV or JSONL with user_text and assistant_text (a sample_scores export) or prompt and response"
OVERLAY_HELP = "The calibration overlay to write (default: SAFEMON_CALIBRATION, else calibration.json); point SAFEMON_CALIBRATION at it"


def calibrate(
    benign: Annotated[Path, typer.Option(help=BENIGN_HELP, exists=True, dir_okay=False)],
    target_fpr: Annotated[float, typer.Option(help="Share of benign answers the harmful-compliance head may flag")] = 0.01,
    out: Annotated[Path | None, typer.Option(help=OVERLAY_HELP)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the calibration / held-out split")] = 0,
) -> None:
    """Set the harmful-compliance threshold (what flags a violation) for a target false-positive rate on benign traffic.

    Run it after onboarding a target and after each model_version change. Refusal is not
    calibrated here: benign requests may rightly be refused, and over-refusal counts those.
    """
    from pipeline.detectors.shipped import write_calibration
    from pipeline.detectors.stack import DetectorStack
    from pipeline.lab.calibration import calibrate as fit_threshold
    from pipeline.lab.calibration import describe, file_entry, overlay_path, read_traffic
    from pipeline.settings import get_settings

    settings = get_settings()
    base = settings.model_copy(update={"calibration": None})
    try:
        traffic = read_traffic(benign)
        stack = DetectorStack.from_settings(base)
        if stack.head is None or stack.head.get("harmful_compliance") is None:
            raise ValueError("calibration sets a head's threshold, and no harmful-compliance head is in use (SAFEMON_DETECTOR_DEFAULTS=exemplars?)")
        with console.status(f"scoring {len(traffic)} rows"):
            scores = [s.harmful_compliance for s in stack.score(traffic["response"].tolist(), traffic["prompt"].tolist())]
        result = fit_threshold(scores, target_fpr, seed=seed)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    path = overlay_path(out, settings)
    write_calibration(path, "detectors", file_entry(benign, stack.head.digest, result, thresholds={"harmful_compliance": result.threshold}))
    console.print(f"harmful_compliance: {describe(result)}")
    console.print(f"wrote {path}; set SAFEMON_CALIBRATION={path}")


def register(app: typer.Typer) -> None:
    """Add `safemon detectors fit` and `safemon eval detectors` to the main app."""
    detectors_app = typer.Typer(help="Detector heads: fit and inspect.", no_args_is_help=True)
    detectors_app.command("fit")(fit)
    detectors_app.command("build-defaults")(build_defaults)
    detectors_app.command("calibrate")(calibrate)
    app.add_typer(detectors_app, name="detectors")
    eval_group(app).command("detectors")(eval_detectors)
