"""Judge commands of the `safemon` CLI: the recorded judge stand-in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)
judge_app = typer.Typer(help="The LLM judge.", no_args_is_help=True)

# standin.Unknown, spelled again: importing the stand-in here would slow every `safemon` command.
Unknown = Literal["error", "safe", "unsafe"]


@judge_app.command("standin")
def standin(
    recording: Annotated[
        Path | None, typer.Option(help="Recorded verdicts: JSONL of prompt, response, unsafe, categories", exists=True, dir_okay=False)
    ] = None,
    jbb: Annotated[
        Path | None, typer.Option(help="JailbreakBench's jbb_artifacts_flat.jsonl: serve Llama Guard 1's recorded verdicts", exists=True, dir_okay=False)
    ] = None,
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one)")] = 8766,
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    latency_ms: Annotated[float, typer.Option(help="Fixed latency per request")] = 0.0,
    unknown: Annotated[Unknown, typer.Option(help="Answer to a pair not in the recording: HTTP 404, or that verdict")] = "error",
) -> None:
    """Serve recorded verdicts as an OpenAI-compatible judge, in the llama_guard or rubric format (for demos and tests)."""
    # Imported here: `safemon --help` should not pay for the judge's imports.
    from pipeline.judge.standin import RecordingError, jbb_recording, load_judge_recording, serve

    sources = [(path, load) for path, load in ((recording, load_judge_recording), (jbb, jbb_recording)) if path is not None]
    if len(sources) != 1:
        err.print("[red]error:[/red] give exactly one of --recording and --jbb")
        raise typer.Exit(2)
    [(source, load)] = sources
    try:
        records = load(source)
    except RecordingError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    serve(
        records,
        port=port,
        host=host,
        latency_ms=latency_ms,
        unknown=unknown,
        on_start=lambda url: console.print(f"judging from {source} ({len(records)} verdicts) on {url} (Ctrl-C to stop)"),
    )
