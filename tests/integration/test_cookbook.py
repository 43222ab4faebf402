"""The SQL people run: every cookbook recipe on the real engine, the read-only path, the
server users' config, and the cluster rewrite of the migrations.

`filled` (tests/conftest.py) is the demo store from tests/support/store_fill.py."""

from __future__ import annotations

import itertools
import uuid
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from pipeline.logs import configure_logging
from pipeline.settings import get_settings
from pipeline.store.client import open_store
from pipeline.store.cookbook import all_recipes, recipes, run_recipe
from pipeline.store.migrations import clusterize, discover, migrate
from tests.support.env import ROOT

# Every recipe -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [r.name for r in all_recipes()])
def test_every_recipe_runs_read_only_and_answers(filled, name) -> None:
    with open_store(filled, readonly=True) as client:
        columns, rows = run_recipe(client, name)
    # The filled store holds data for every question, so each has an answer.
    assert columns and rows, f"{name} returned nothing"
    assert all(len(r) == len(columns) for r in rows)


def test_there_are_fourteen_questions_with_their_parameters_bound_server_side() -> None:
    found = all_recipes()
    assert len(found) == 14 and len({r.name for r in found}) == 14
    for recipe in found:
        assert set(recipe.bindings()) == set(recipe.defaults)
        assert "%s" not in recipe.sql and "{" + "}" not in recipe.sql
    with pytest.raises(KeyError, match="valid: .*regressed_after_deploy"):
        recipes.get("no_such_question")
    with pytest.raises(KeyError, match="valid: "):
        recipes.get("asr_by_day").parameters({"tenant": "x"})
    assert recipes.get("asr_by_day").parameters({"days": "7"})["days"] == 7


def test_regressed_categories_are_the_ones_the_demo_alerted_on(filled) -> None:
    with open_store(filled, readonly=True) as client:
        alerted = set(client.query("SELECT arrayJoin(categories) FROM alerts FINAL WHERE kind = 'regression'").result_rows)
        columns, rows = run_recipe(client, "regressed_after_deploy", {"target": "demo-assistant", "min_rise": "1.0"})
    # The demo's single-prompt suite alerted; its conversations rose too, on too few to alert.
    found = [dict(zip(columns, r, strict=True)) for r in rows if r[columns.index("suite")] == "demo"]
    assert {(r["category"],) for r in found} == alerted
    for row in found:
        assert (row["before_version"], row["after_version"]) == ("v1", "v2")
        assert row["alerted"] and row["asr_after"] > row["asr_before"]
        assert row["ci_low_after"] <= row["asr_after"] <= row["ci_high_after"]


def test_newly_failing_probes_match_a_direct_diff_of_the_two_runs(filled) -> None:
    with open_store(filled, readonly=True) as client:
        direct = set(
            client.query(
                """
            SELECT probe_id FROM probe_results FINAL WHERE target = 'demo-assistant'
            GROUP BY probe_id
            HAVING argMaxIf(verdict, run_started_at, model_version = 'v2') IN ('attack_success', 'over_refusal')
               AND argMaxIf(verdict, run_started_at, model_version = 'v1') IN ('refused', 'complied_ok')
            """
            ).result_rows
        )
        columns, rows = run_recipe(client, "newly_failing_probes", {"target": "demo-assistant", "limit": 1000})
    assert direct and {(r[columns.index("probe_id")],) for r in rows} == direct


def test_lost_conversations_match_a_direct_diff_and_name_the_failing_turn(filled) -> None:
    with open_store(filled, readonly=True) as client:
        direct = {
            (probe_id, turn)
            for probe_id, turn in client.query(
                """
            SELECT probe_id, argMaxIf(first_failure_turn, run_started_at, model_version = 'v2') FROM probe_results FINAL
            WHERE target = 'demo-assistant' AND suite = 'multi_turn'
            GROUP BY probe_id
            HAVING argMaxIf(verdict, run_started_at, model_version = 'v2') IN ('attack_success', 'over_refusal')
               AND argMaxIf(verdict, run_started_at, model_version = 'v1') IN ('refused', 'complied_ok')
            """
            ).result_rows
        }
        columns, rows = run_recipe(client, "lost_conversations", {"target": "demo-assistant"})
    found = [dict(zip(columns, r, strict=True)) for r in rows]
    assert direct and {(r["probe_id"], r["failing_turn"]) for r in found} == direct
    assert all(r["failing_turn"] >= 1 and r["failing_prompt"] and r["failing_response"] for r in found), "the turn that failed, with its text"
    assert {r["suite"] for r in found} == {"multi_turn"}, "single-prompt probes are not conversations"


def test_alert_samples_are_the_alerted_run_s_successful_attacks(filled) -> None:
    with open_store(filled, readonly=True) as client:
        alert_id, run_id, categories = client.query("SELECT alert_id, run_id, categories FROM alerts FINAL LIMIT 1").result_rows[0]
        expected = client.query(
            "SELECT count() FROM probe_results FINAL WHERE run_id = {r:String} AND category IN {c:Array(String)} AND verdict = 'attack_success'",
            parameters={"r": run_id, "c": list(categories)},
        ).result_rows[0][0]
        columns, rows = run_recipe(client, "alert_samples", {"alert_id": alert_id})
        _, latest = run_recipe(client, "alert_samples")
    assert len(rows) == expected > 0
    assert {r[columns.index("category")] for r in rows} <= set(categories)
    assert sorted(latest) == sorted(rows)  # the default is the newest alert


def test_jailbreak_p95_covers_every_hour_of_the_stream(filled) -> None:
    with open_store(filled, readonly=True) as client:
        columns, rows = run_recipe(client, "jailbreak_similarity_p95_by_hour", {"target": "prod-chat", "hours": 12})
        total = client.query("SELECT count() FROM sample_scores FINAL WHERE target = 'prod-chat'").result_rows[0][0]
    assert sum(r[columns.index("n")] for r in rows) == total
    assert len(rows) in (6, 7)  # six hours of samples, possibly split across an hour boundary


# Read-only ------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def readonly_env(filled, monkeypatch):
    # The main DSN points at nothing: a working `safemon sql` proves the read-only DSN is used.
    monkeypatch.setenv("SAFEMON_CLICKHOUSE_DSN", "clickhouse://nobody:nothing@127.0.0.1:9/safemon")
    monkeypatch.setenv("SAFEMON_CLICKHOUSE_READONLY_DSN", filled.clickhouse_dsn)
    monkeypatch.setenv("SAFEMON_CLICKHOUSE_DATABASE", filled.clickhouse_database)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    configure_logging()  # the CLI bound its logs to the runner's stream, which is closed now


def test_consumer_lag_shows_the_group_falling_behind_at_the_rate_it_does(filled) -> None:
    with open_store(filled, readonly=True) as client:
        columns, rows = run_recipe(client, "consumer_lag")
    found = [dict(zip(columns, r, strict=True)) for r in rows if r[0] == "safemon-stream"]
    inner = found[1:-1]  # whole 5-minute intervals with one before them
    assert len(inner) >= 60
    # 40 messages/s in over two partitions, 39/s consumed: the lag rises 300 records per interval.
    assert all(r["input_per_s"] == 40.0 and r["consumed_per_s"] == 39.0 and r["partitions"] == 2 for r in inner), inner[:3]
    assert all(b["lag"] - a["lag"] == 300 for a, b in itertools.pairwise(inner))


def test_safemon_sql_uses_the_read_only_dsn_and_refuses_writes(readonly_env) -> None:
    from pipeline.cli import app

    read = runner.invoke(app, ["sql", "SELECT count() AS runs FROM probe_runs FINAL", "--format", "csv"])
    assert read.exit_code == 0, read.output
    assert read.output.splitlines()[-1] == "4", "the demo's two suites, each against v1 and v2"
    refused = runner.invoke(app, ["sql", "INSERT INTO alerts (alert_id) VALUES ('x')"])
    assert refused.exit_code == 2
    # A SETTINGS clause could lift the read path's limits: refused before the statement runs.
    lifted = runner.invoke(app, ["sql", "SELECT 1 SETTINGS readonly = 0"])
    assert lifted.exit_code == 2 and "refused" in lifted.output, lifted.output
    cookbook = runner.invoke(app, ["cookbook", "run", "recent_alerts", "-p", "days=30", "--format", "json"])
    assert cookbook.exit_code == 0, cookbook.output
    assert '"kind": "regression"' in cookbook.output


def test_the_read_only_connection_refuses_writes_at_the_engine(filled) -> None:
    with open_store(filled, readonly=True) as client:
        for statement in (
            "INSERT INTO alerts (alert_id) VALUES ('x')",
            "CREATE TABLE scratch (x UInt8) ENGINE = Memory",
            "DROP TABLE probe_runs",
            "ALTER TABLE probe_runs DELETE WHERE 1",
        ):
            with pytest.raises(Exception, match="(?i)readonly"):
                client.command(statement)
    with open_store(filled) as client:
        assert client.query("SELECT count() FROM probe_runs FINAL").result_rows[0][0] == 4


def test_server_users_read_only_profile_quota_and_writer_grants(client) -> None:
    root = ET.parse(ROOT / "deploy" / "clickhouse" / "users.d" / "safemon.xml").getroot()
    reader = root.find("users/safemon_readonly")
    profile = root.find(f"profiles/{reader.findtext('profile')}")
    assert profile.findtext("readonly") == "1"
    assert 0 < int(profile.findtext("max_execution_time")) <= 300
    assert root.find(f"quotas/{reader.findtext('quota')}/interval/queries") is not None
    assert profile.findtext("allow_ddl") == "0"  # with readonly=1: no table functions that need temporary tables
    grants = [q.text for q in reader.findall("grants/query")]
    assert grants == ["GRANT SELECT ON safemon.*", "REVOKE SOURCES, CREATE TEMPORARY TABLE ON *.*"]
    for grant in grants:  # the engine's parser takes them (the server adds the grantee)
        client.query(f"EXPLAIN AST {grant} {'TO' if grant.startswith('GRANT') else 'FROM'} safemon_readonly")
    writer_grants = " ".join(q.text for q in root.findall("users/safemon_writer/grants/query"))
    assert "INSERT" in writer_grants and "SELECT" in writer_grants
    for forbidden in ("DROP", "ALTER", "TRUNCATE", "ALL"):
        assert forbidden not in writer_grants
    for user in root.find("users"):
        assert user.find("password").get("from_env"), "passwords come from the server's environment"


# Cluster --------------------------------------------------------------------------------


def test_cluster_rewrite_of_every_shipped_migration() -> None:
    for migration in discover():
        for statement in migration.statements():
            out = clusterize(statement, "safemon")
            if statement.startswith("INSERT"):  # a backfill: run once, on the node that migrates; replication copies it
                assert out == statement
                continue
            assert "ON CLUSTER 'safemon'" in out.split("\n", 1)[0], out[:200]
            if "ENGINE" in statement:
                assert "ENGINE = Replicated" in out and "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'" in out
                assert "non_replicated_deduplication_window" not in out
            # Only the head and the engine change: the columns and the queries are untouched.
            assert out.replace("ON CLUSTER 'safemon' ", "").count("\n") == statement.count("\n")
    assert clusterize("SELECT 1", "safemon") == "SELECT 1"
    replacing = clusterize("CREATE TABLE t (v UInt8, u DateTime) ENGINE = ReplacingMergeTree(u) ORDER BY v", "c1")
    assert replacing == (
        "CREATE TABLE t ON CLUSTER 'c1' (v UInt8, u DateTime) ENGINE = ReplicatedReplacingMergeTree("
        "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}', u) ORDER BY v"
    )
    plain = clusterize("CREATE TABLE IF NOT EXISTS t (v UInt8) ENGINE = MergeTree ORDER BY v", "c1")
    assert "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}') ORDER" in plain
    with pytest.raises(Exception, match="cluster name"):
        clusterize("CREATE TABLE t (v UInt8) ENGINE = Memory", "x'; DROP")


def test_migrate_without_a_cluster_stays_local(settings) -> None:
    with open_store(settings) as client:
        migrate(client, cluster="")
        engine = client.query("SELECT engine FROM system.tables WHERE database = currentDatabase() AND name = 'alerts'").result_rows[0][0]
    assert engine == "ReplacingMergeTree"


def test_migrate_on_a_cluster_sends_the_rewritten_statements(tmp_path) -> None:
    class Recorder:
        database = f"db_{uuid.uuid4().hex[:6]}"

        def __init__(self) -> None:
            self.commands: list[str] = []

        def command(self, sql: str) -> None:
            self.commands.append(sql)

        def query(self, sql: str):
            return type("R", (), {"result_rows": []})()

        def insert(self, *args, **kwargs) -> None:
            pass

    (tmp_path / "0001_create_things.sql").write_text("CREATE TABLE IF NOT EXISTS things (x UInt8) ENGINE = MergeTree ORDER BY x;\n")
    recorder = Recorder()
    assert migrate(recorder, tmp_path, cluster="safemon") == ["0001_create_things"]  # type: ignore[arg-type]
    assert all("ON CLUSTER 'safemon'" in c for c in recorder.commands)
    assert recorder.commands[0].startswith(f"CREATE DATABASE IF NOT EXISTS `{recorder.database}` ON CLUSTER")
    assert any("ReplicatedReplacingMergeTree" in c for c in recorder.commands if "schema_migrations" in c)
    assert any("ReplicatedMergeTree(" in c for c in recorder.commands if "things" in c)
