"""drift commands of the `safemon` CLI."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the drift commands to the main app."""
