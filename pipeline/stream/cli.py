"""Stream commands of the `safemon` CLI: replay, samples convert, stream."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)
samples_app = typer.Typer(help="Conversation samples (conversation_sample.v1 JSONL).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the stream commands to the main app."""
    app.command("replay")(replay)
    app.command("stream")(stream)
    app.add_typer(samples_app, name="samples")


def replay(
    file: Annotated[Path, typer.Option(help="conversation_sample.v1 JSONL", exists=True)],
    topic: Annotated[str | None, typer.Option(help="Topic (default SAFEMON_KAFKA_TOPIC)")] = None,
    rate: Annotated[float | None, typer.Option(help="Messages per second (default: as fast as possible)")] = None,
    loop: Annotated[bool, typer.Option(help="Start again at the end of the file until interrupted")] = False,
) -> None:
    """Produce samples from a JSONL file with an idempotent producer, keyed by conversation_id."""
    from pipeline.settings import get_settings
    from pipeline.stream.producer import replay_file

    sent = replay_file(get_settings(), file, topic=topic, rate=rate, loop=loop, console=console)
    console.print(f"produced {sent} message(s)")


def stream(
    max_idle_seconds: Annotated[float | None, typer.Option(help="Exit 0 after this long without records")] = None,
) -> None:
    """Consume conversation samples: validate, redact, embed, score and store each exactly once."""
    from pipeline.settings import ConfigError, get_settings
    from pipeline.stream.worker import run_worker

    try:
        code = run_worker(get_settings(), max_idle_seconds=max_idle_seconds)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@samples_app.command("convert")
def convert(
    kind: Annotated[str, typer.Argument(help="hh-rlhf or instructions")],
    path: Annotated[Path, typer.Argument(help="The public file to convert", exists=True)],
    out: Annotated[Path, typer.Option(help="Where to write conversation_sample.v1 JSONL")],
    target: Annotated[str, typer.Option(help="Deployment name to put in each sample")] = "demo-assistant",
    model_version: Annotated[str, typer.Option(help="model_version to put in each sample")] = "v1",
    limit: Annotated[int | None, typer.Option(help="At most this many samples")] = None,
) -> None:
    """Turn public conversation formats into conversation_sample.v1 JSONL."""
    from pipeline.stream.convert import convert_file

    written = convert_file(kind, path, out, target=target, model_version=model_version, limit=limit)
    console.print(f"wrote {written} sample(s) to {out}")
