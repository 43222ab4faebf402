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


def fit(
    data: Annotated[list[Path], typer.Option("--data", help="Labelled CSV/JSONL (or the XSTest folder); repeat for several", exists=True)],
    out: Annotated[Path, typer.Option(help="Where to write the head artifact (.npz)")],
    split: Annotated[str, typer.Option(help=SPLIT_HELP)] = "prompt",
    data_format: Annotated[str | None, typer.Option("--format", help="xstest, jbb or qa (default: from the columns)")] = None,
    test_size: Annotated[float, typer.Option(help="Share of groups held out (not fitted on)")] = 0.3,
    seed: Annotated[int, typer.Option(help="Seed of the held-out draw")] = 0,
) -> None:
    """Fit detector heads on the training part of labelled data and save them as an artifact."""
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
    for task, by_source in heads.provenance["heads_fitted"].items():
        rows = ", ".join(f"{n} from {source}" for source, n in by_source.items())
        console.print(f"fitted {task} on {sum(by_source.values())} rows ({rows})")
    for task, why in heads.provenance["heads_not_fitted"].items():
        console.print(f"[yellow]not fitted[/yellow] {task}: {why}")
    console.print(f"wrote {out}; set SAFEMON_DETECTOR_HEAD={out}")


def held_out_rows(frame: Any, path: Path, provenance: dict[str, Any]) -> tuple[Any, str]:
    """The rows a head never saw: the recorded held-out part when it was fitted on this very file."""
    from pipeline.lab.evaluation import file_digest, holdout_mask

    digest = file_digest(path)
    for source in provenance.get("data", []):
        if source.get("sha256") == digest:
            split = provenance["split"]
            if split["by"] == "none":
                raise ValueError(f"the head was fitted on every row of {path}; evaluate it on other data")
            mask = holdout_mask(frame, split["by"], split["test_size"], split["seed"])
            return frame[mask], f"held-out part of the recorded split (by {split['by']}, test_size {split['test_size']}, seed {split['seed']})"
    return frame, "all rows (the head was not fitted on this file)"


def eval_detectors(
    data: Annotated[Path, typer.Option(help="Labelled file (or the XSTest folder)", exists=True)],
    data_format: Annotated[str | None, typer.Option("--format", help="xstest, jbb or qa (default: from the columns)")] = None,
    detectors: Annotated[Path | None, typer.Option(help="Fitted head artifact (default: SAFEMON_DETECTOR_HEAD, else built-in)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics here as JSON")] = None,
    boot: Annotated[int, typer.Option(help="Bootstrap resamples per interval")] = 1000,
) -> None:
    """Evaluate the detectors (and the file's baselines) on labelled responses."""
    from pipeline.detectors.embedder import embedder_from_settings
    from pipeline.detectors.head import HeadError, HeadSet
    from pipeline.detectors.stack import DetectorStack, load_head
    from pipeline.lab.evaluation import deduplicate, lead_text, load_labelled
    from pipeline.lab.training import embed_frame, evaluate, predict_frame
    from pipeline.settings import get_settings

    settings = get_settings()
    embedder = embedder_from_settings(settings)
    try:
        heads = HeadSet.load(detectors, expect_model=embedder.model_name) if detectors else load_head(settings, embedder)
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
        "data": str(data),
        "format": rows["format"].iloc[0] if len(rows) else data_format,
        "rows": note,
        "detectors": str(detectors or settings.detector_head or "built-in"),
        "tasks": metrics,
    }
    table = Table("task", "system", "n", "accuracy", "precision", "recall", "F1", "detector - this (paired)", title=f"{data.name}: {note}")
    for task, systems in metrics.items():
        for system, m in systems.items():
            cells = [f"{m[k]['value']:.3f} [{m[k]['ci'][0]:.2f}, {m[k]['ci'][1]:.2f}]" for k in ("accuracy", "precision", "recall", "f1")]
            n = f"{m['n']} ({m['missing']} rows lack it)" if m.get("missing") else str(m["n"])
            table.add_row(task, system, n, *cells, lead_text(m))
    console.print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))


def register(app: typer.Typer) -> None:
    """Add `safemon detectors fit` and `safemon eval detectors` to the main app."""
    detectors_app = typer.Typer(help="Detector heads: fit and inspect.", no_args_is_help=True)
    detectors_app.command("fit")(fit)
    app.add_typer(detectors_app, name="detectors")
    eval_group(app).command("detectors")(eval_detectors)
