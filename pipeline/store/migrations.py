"""Numbered SQL migrations from `schemas/clickhouse/`, applied in order and recorded.

A migration file is never edited once shipped: its checksum is recorded, and a changed
file fails loudly instead of leaving the schema and the history out of step.

On a cluster (`SAFEMON_CLICKHOUSE_CLUSTER`) the same files are applied with every DDL
statement rewritten to run `ON CLUSTER` and every MergeTree-family engine made
Replicated (`clusterize`), so one set of migrations serves the embedded engine, a single
server and a replicated cluster.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
from clickhouse_connect.driver.client import Client

from pipeline.paths import SCHEMAS

log = structlog.get_logger()
MIGRATIONS_DIR = SCHEMAS / "clickhouse"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """A migration file is malformed, edited after it shipped, or failed to apply."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """The statements of the file, split on semicolons that end a line."""
        body = "\n".join(line for line in self.sql.splitlines() if not line.lstrip().startswith("--"))
        return [s.strip() for s in re.split(r";\s*(?:\n|$)", body) if s.strip()]


# Zookeeper/Keeper path and replica name from the servers' macros: one replica set per shard
# and table, so `{database}` and `{table}` keep tables of different databases apart.
REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
REPLICA_NAME = "{replica}"
_DDL = re.compile(
    r"^(?P<head>\s*(?:CREATE|ALTER|DROP|RENAME|TRUNCATE)\s+(?:OR\s+REPLACE\s+)?"
    r"(?:TEMPORARY\s+)?(?:TABLE|VIEW|MATERIALIZED\s+VIEW|DATABASE|DICTIONARY|FUNCTION)\s+"
    r"(?:IF\s+(?:NOT\s+)?EXISTS\s+)?)(?P<name>`[^`]+`|[\w.]+)",
    re.I,
)
_ENGINE = re.compile(r"ENGINE\s*=\s*(?P<engine>(?:Replacing|Summing|Aggregating|Collapsing|VersionedCollapsing)?MergeTree)\b(?:\s*\((?P<args>[^()]*)\))?", re.I)


def clusterize(statement: str, cluster: str) -> str:
    """Rewrite one DDL statement for `cluster`: `ON CLUSTER` after the object's name, and
    `Replicated*MergeTree` engines (with the replica path from the servers' macros) instead
    of the local MergeTree family. Statements that are not DDL pass through unchanged."""
    if not re.fullmatch(r"[\w.-]+", cluster):
        raise MigrationError(f"cluster name {cluster!r} must be letters, digits, '_', '-' or '.'")
    match = _DDL.match(statement)
    if match is None:
        return statement
    if re.search(r"\bON\s+CLUSTER\b", statement, re.I):
        return statement
    rewritten = f"{match.group('head')}{match.group('name')} ON CLUSTER '{cluster}'{statement[match.end() :]}"

    def replicated(engine: re.Match[str]) -> str:
        args = (engine.group("args") or "").strip()
        params = ", ".join(p for p in (f"'{REPLICA_PATH}'", f"'{REPLICA_NAME}'", args) if p)
        return f"ENGINE = Replicated{engine.group('engine')}({params})"

    rewritten = _ENGINE.sub(replicated, rewritten)
    # Replicated tables deduplicate inserts by their own window setting.
    return re.sub(r"\bnon_replicated_deduplication_window\b", "replicated_deduplication_window", rewritten)


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """All migrations in `directory`, ordered by version."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_verb_object.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version} is used twice")
        found[version] = Migration(version, path.stem, path.read_text())
    return [found[v] for v in sorted(found)]


def migrate(client: Client, directory: Path = MIGRATIONS_DIR, *, cluster: str | None = None) -> list[str]:
    """Apply pending migrations; return the names applied. Safe to re-run.

    With `cluster` (settings.clickhouse_cluster) every DDL statement runs ON CLUSTER.
    """

    def ddl(statement: str) -> str:
        return clusterize(statement, cluster) if cluster else statement

    if cluster:
        client.command(ddl(f"CREATE DATABASE IF NOT EXISTS `{client.database}`"))
    client.command(
        ddl(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, checksum String, "
            "applied_at DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree ORDER BY version"
        )
    )
    applied = {row[0]: (row[1], row[2]) for row in client.query("SELECT version, name, checksum FROM schema_migrations FINAL").result_rows}
    done: list[str] = []
    for migration in discover(directory):
        if migration.version in applied:
            name, checksum = applied[migration.version]
            if checksum != migration.checksum:
                raise MigrationError(f"{migration.name}.sql changed after it was applied as {name!r}; add a new migration instead")
            continue
        for statement in migration.statements():
            try:
                client.command(ddl(statement))
            except Exception as exc:
                raise MigrationError(f"{migration.name}.sql failed: {exc}") from exc
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name, migration.checksum, datetime.now(UTC)]],
            column_names=["version", "name", "checksum", "applied_at"],
        )
        log.info("store.migration_applied", migration=migration.name)
        done.append(migration.name)
    return done


def drop_database(client: Client, name: str) -> None:
    """Drop a whole database (the demo starts from an empty one each time)."""
    if not re.fullmatch(r"\w+", name):
        raise MigrationError(f"database name {name!r} must be letters, digits and '_'")
    client.command(f"DROP DATABASE IF EXISTS `{name}`")
