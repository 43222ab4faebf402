"""report commands of the `safemon` CLI: the HTML report, the SQL cookbook and generated docs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.paths import ROOT

console = Console()
err = Console(stderr=True)
README = ROOT / "README.md"

docs_app = typer.Typer(help="Generated sections of the README (they cannot drift from the code).", no_args_is_help=True)
cookbook_app = typer.Typer(help="The SQL cookbook: answers to the questions teams ask, read-only.", no_args_is_help=True)


def _settings():
    from pipeline.settings import ConfigError, get_settings

    try:
        return get_settings()
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def report(
    since: Annotated[str, typer.Option(help="How far back: 30d, 12h, 90m, 2w")] = "30d",
    out: Annotated[Path, typer.Option(help="The HTML file to write")] = Path("report.html"),
    screenshot: Annotated[Path | None, typer.Option(help="Also save a PNG of the page (needs Chromium)")] = None,
) -> None:
    """Write one self-contained HTML report: ASR, violation rates, drift, alerts, latest runs."""
    from pipeline.report.page import STEPS, parse_span, write_report

    try:
        span = parse_span(since)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    settings = _settings()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err) as progress:
        task = progress.add_task("report", total=len(STEPS))

        def advance(step: str) -> None:
            progress.update(task, advance=1, description=step)

        summary = write_report(settings, span, out, on_step=advance)
    console.print(f"wrote {summary.path} ({summary.charts} charts, {summary.rows_read} aggregated rows) in {summary.seconds:.1f}s")
    if screenshot is not None:
        from pipeline.lab.browser import BrowserError, render_page

        try:
            render_page(out, screenshot)
        except BrowserError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
        console.print(f"screenshot: {screenshot}")


def _refresh(name: str, write: bool) -> None:
    from pipeline.report.readme import refresh

    try:
        current = refresh(README, name, write=write)
    except ValueError as exc:  # markers missing
        err.print(f"[red]error:[/red] README.md: {exc}")
        raise typer.Exit(2) from None
    if current:
        console.print(f"the README's {name} section is current")
    elif write:
        console.print(f"rewrote the README's {name} section")
    else:
        err.print(f"[red]the README's {name} section is stale[/red]: run `safemon docs {name} --write`")
        raise typer.Exit(1)


@docs_app.command("settings")
def docs_settings(
    write: Annotated[bool, typer.Option("--write", help="Rewrite the README section instead of checking it")] = False,
    show: Annotated[bool, typer.Option("--show", help="Print the generated Markdown")] = False,
) -> None:
    """Check (or --write) the configuration reference generated from the settings object."""
    from pipeline.report.settings_reference import render_settings_reference

    if show:
        sys.stdout.write(render_settings_reference())
        return
    _refresh("settings", write)


@docs_app.command("cookbook")
def docs_cookbook(
    write: Annotated[bool, typer.Option("--write", help="Rewrite the README section instead of checking it")] = False,
) -> None:
    """Check (or --write) the SQL cookbook section generated from pipeline/store/cookbook.py."""
    _refresh("cookbook", write)


@cookbook_app.command("list")
def cookbook_list() -> None:
    """The questions, with their recipe names and parameters."""
    from pipeline.store.cookbook import all_recipes

    table = Table("recipe", "question", "parameters (defaults)", "views")
    for recipe in all_recipes():
        table.add_row(recipe.name, recipe.question, ", ".join(f"{k}={v!r}" for k, v in recipe.defaults.items()), ", ".join(recipe.views))
    console.print(table)


@cookbook_app.command("run")
def cookbook_run(
    name: Annotated[str, typer.Argument(help="Recipe name (safemon cookbook list)")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value, repeatable")] = None,
    output: Annotated[str, typer.Option("--format", "-f", help="table, csv or json")] = "table",
    show_sql: Annotated[bool, typer.Option("--sql", help="Print the SQL and parameters instead of running it")] = False,
) -> None:
    """Answer one cookbook question on the read-only connection."""
    from pipeline.store.client import open_store
    from pipeline.store.cookbook import recipes, run_recipe
    from pipeline.store.sql import ReadOnlyViolation

    if output not in ("table", "csv", "json"):
        err.print("[red]error:[/red] --format must be table, csv or json")
        raise typer.Exit(2)
    overrides = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            err.print(f"[red]error:[/red] --param {item!r} must be key=value")
            raise typer.Exit(2)
        overrides[key.strip()] = value
    try:
        recipe = recipes.get(name)
        params = recipe.parameters(overrides)
    except (KeyError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc.args[0] if exc.args else exc}")
        raise typer.Exit(2) from None
    if show_sql:
        console.print(recipe.sql, markup=False, highlight=False)
        console.print(json.dumps(params))
        return
    try:
        with open_store(_settings(), readonly=True) as client:
            columns, rows = run_recipe(client, name, params)
    except ReadOnlyViolation as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except Exception as exc:  # the engine's own message is the useful part
        err.print(f"[red]error:[/red] {str(exc).splitlines()[0]}")
        raise typer.Exit(1) from None
    from pipeline.report.console import print_rows

    print_rows(console, columns, rows, output, title=recipe.question)


def register(app: typer.Typer) -> None:
    """Add the report commands to the main app."""
    app.command("report")(report)
    app.add_typer(docs_app, name="docs")
    app.add_typer(cookbook_app, name="cookbook")
