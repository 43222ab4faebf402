"""Read-only SQL for people: one statement, of a kind that cannot write."""

from __future__ import annotations

import re

from clickhouse_connect.driver.client import Client

READ_ONLY_KINDS = ("SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "WITH", "EXISTS")
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)


class ReadOnlyViolation(ValueError):
    """The statement is not a read-only query."""


def check_read_only(sql: str) -> str:
    """Return the statement without a trailing `;`, or refuse anything but one read-only query."""
    stripped = _COMMENTS.sub(" ", sql).strip().rstrip(";").strip()
    if not stripped:
        raise ReadOnlyViolation("empty statement")
    if ";" in stripped:
        raise ReadOnlyViolation("one statement at a time")
    kind = stripped.split(None, 1)[0].upper()
    if kind not in READ_ONLY_KINDS:
        raise ReadOnlyViolation(f"{kind} is refused: only {', '.join(READ_ONLY_KINDS)} statements run here")
    return stripped


def run_read_only(client: Client, sql: str, parameters: dict | None = None) -> tuple[list[str], list[tuple]]:
    """Run a checked statement on a read-only client; return column names and rows."""
    result = client.query(check_read_only(sql), parameters=parameters or {})
    return list(result.column_names), [tuple(row) for row in result.result_rows]
