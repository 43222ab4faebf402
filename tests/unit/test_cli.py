"""The `safemon` CLI as a person uses it (in-process with typer's runner, real store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.settings import get_settings

runner = CliRunner()


@pytest.fixture
def env(settings, monkeypatch):
    monkeypatch.setenv("SAFEMON_CLICKHOUSE_DSN", settings.clickhouse_dsn)
    monkeypatch.setenv("SAFEMON_CLICKHOUSE_DATABASE", settings.clickhouse_database)
    monkeypatch.setenv("SAFEMON_TARGETS_FILE", str(settings.targets_file))
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["db"],
        ["db", "migrate"],
        ["sql"],
        ["probe", "run"],
        ["suites"],
        ["suites", "import"],
        ["target", "replay"],
        ["demo"],
        ["alerts", "send"],
        ["stream"],
        ["replay"],
        ["samples", "convert"],
    ],
)
def test_help_everywhere(command) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_db_migrate_then_sql_in_three_formats(env) -> None:
    from pipeline.store.migrations import discover

    versions = [m.version for m in discover()]
    first = runner.invoke(app, ["db", "migrate"])
    assert first.exit_code == 0 and f"applied {len(versions)} migration" in first.output
    again = runner.invoke(app, ["db", "migrate"])
    assert "schema is current" in again.output
    as_json = runner.invoke(app, ["sql", "SELECT version, name FROM schema_migrations FINAL ORDER BY version", "--format", "json"])
    assert [r["version"] for r in json.loads(as_json.output)] == versions
    as_csv = runner.invoke(app, ["sql", "SELECT 1 AS one, 'a,b' AS two", "-f", "csv"])
    assert as_csv.output.splitlines() == ["one,two", '1,"a,b"']
    as_table = runner.invoke(app, ["sql", "SHOW TABLES"])
    assert as_table.exit_code == 0 and "probe_results" in as_table.output


@pytest.mark.parametrize(
    "statement", ["INSERT INTO alerts (alert_id) VALUES ('x')", "DROP TABLE alerts", "SELECT 1; DROP TABLE alerts", "OPTIMIZE TABLE alerts"]
)
def test_sql_refuses_anything_that_writes(env, statement) -> None:
    result = runner.invoke(app, ["sql", statement])
    assert result.exit_code == 2
    assert "refused" in result.output or "one statement" in result.output


def test_suites_list_and_show() -> None:
    listing = runner.invoke(app, ["suites", "list"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0
    for name in ("core", "jailbreaks", "injection", "leakage", "over_refusal", "demo"):
        assert name in listing.output
    shown = runner.invoke(app, ["suites", "show", "jailbreaks"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "jailbreaks v" in shown.output
    unknown = runner.invoke(app, ["suites", "show", "nope"])
    assert unknown.exit_code == 2 and "core" in unknown.output  # lists the valid names


def test_suites_import_writes_a_loadable_suite(datasets, tmp_path) -> None:
    from pipeline.probes.suites import load_suite

    out = tmp_path / "advbench.yaml"
    result = runner.invoke(app, ["suites", "import", "advbench", str(datasets / "advbench" / "harmful_behaviors.csv"), "--out", str(out), "--limit", "25"])
    assert result.exit_code == 0, result.output
    assert len(load_suite(out).probes) == 25


def test_probe_run_against_the_replay_endpoint(env, tmp_path) -> None:
    from importlib.resources import files

    from pipeline.probes.replay import ReplayServer

    with ReplayServer(files("pipeline.demo") / "recording.jsonl") as replay:
        env.targets_file.write_text(yaml.safe_dump({"targets": [{"name": "bot", "endpoint": replay.url, "model_version": "v1", "suites": ["demo"]}]}))
        result = runner.invoke(app, ["probe", "run", "--suite", "demo", "--target", "bot"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "bot / demo / v1: passed" in result.output
    missing = runner.invoke(app, ["probe", "run", "--suite", "demo", "--target", "other"])
    assert missing.exit_code == 2 and "bot" in missing.output


def test_bad_config_fails_at_start_naming_the_key(tmp_path) -> None:
    env = {**os.environ, "SAFEMON_ALERT_ALPHA": "2", "SAFEMON_TARGET_CONCURRENCY": "lots"}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "db", "migrate"], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "SAFEMON_ALERT_ALPHA" in done.stderr and "SAFEMON_TARGET_CONCURRENCY" in done.stderr
