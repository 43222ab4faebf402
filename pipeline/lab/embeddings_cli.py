"""embeddings commands of the `safemon` CLI: `safemon embeddings export`."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)

embeddings_app = typer.Typer(help="The embedding model and its ONNX exports.", no_args_is_help=True)


@embeddings_app.command("export")
def export(
    backend: Annotated[str, typer.Option(help="onnx (fp32) or onnx-int8 (also writes the fp32 file it is quantized from)")] = "onnx-int8",
) -> None:
    """Export the embedding model to ONNX (and quantize it) into SAFEMON_EMBEDDING_ONNX_DIR, offline."""
    from pipeline.detectors.embedder import BACKENDS, Embedder
    from pipeline.settings import ConfigError, get_settings

    if backend not in BACKENDS[1:]:
        err.print(f"[red]error:[/red] --backend must be one of {', '.join(BACKENDS[1:])}")
        raise typer.Exit(2)
    start = time.perf_counter()
    try:
        settings = get_settings()
        embedder = Embedder(settings.embedding_model, backend=backend, max_seq_length=settings.embedding_max_seq_length, onnx_dir=settings.embedding_onnx_dir)
        with console.status(f"exporting {backend}"):
            path = embedder.model.path  # loading exports and quantizes unless the cache is current
    except (ConfigError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    verb = f"exported in {time.perf_counter() - start:.1f} s" if embedder.exported else "already exported (the cache is current)"
    console.print(f"{backend}: {path} ({path.stat().st_size / 1e6:.0f} MB), {verb}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the embeddings commands to the main app."""
    app.add_typer(embeddings_app, name="embeddings")
