"""Read-only SQL for people: one statement, of a kind that cannot write, that reads the database only.

A read-only session still lets a query read files, fetch URLs or reach other servers
through table functions (`file`, `url`, `s3`, `remote`, ...) and the scalar `file()`, and
write a local file with `INTO OUTFILE`; on the embedded engine nothing else stops them.
So every statement is parsed by ClickHouse itself (`EXPLAIN AST`, which parses and runs
nothing) and refused when its tree holds a table function outside `ALLOWED_TABLE_FUNCTIONS`,
a function in `DENIED_FUNCTIONS`, an `INTO OUTFILE`, or a `SETTINGS` clause (which could
lift the read path's limits, `store.client.READ_LIMITS`). Case, comments, whitespace,
subqueries and CTEs change the text, not the tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

READ_ONLY_KINDS = ("SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "WITH", "EXISTS")
# Table functions that generate rows and read nothing outside the query.
ALLOWED_TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "values", "null"})
# Scalar functions that read outside the database (`file('/etc/passwd')` returns the file).
DENIED_FUNCTIONS = frozenset({"file"})
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_NODE = re.compile(r"^(?P<indent> *)(?P<kind>\w+)(?: (?P<name>[^ (]+))?")


class ReadOnlyViolation(ValueError):
    """The statement is not a read-only query of the database."""


@dataclass(frozen=True)
class _Node:
    depth: int
    kind: str
    name: str


def _tree(client: Client, statement: str, parameters: dict) -> list[_Node]:
    """ClickHouse's own parse of the statement: one node per line, depth from the indentation."""
    lines = [row[0] for row in client.query(f"EXPLAIN AST {statement}", parameters=parameters).result_rows]
    nodes = []
    for line in lines:
        match = _NODE.match(line)
        if match:
            nodes.append(_Node(len(match["indent"]), match["kind"], (match["name"] or "").strip("`\"'").lower()))
    return nodes


def _problems(nodes: list[_Node]) -> list[str]:
    found = []
    for i, node in enumerate(nodes):
        parent = next((p for p in reversed(nodes[:i]) if p.depth < node.depth), None)
        if node.kind == "Function" and parent is not None and parent.kind == "TableExpression":
            if node.name not in ALLOWED_TABLE_FUNCTIONS:
                found.append(f"table function {node.name}()")
        elif node.kind == "Function" and node.name in DENIED_FUNCTIONS:
            found.append(f"function {node.name}()")
        elif node.kind == "Set":
            found.append("a SETTINGS clause")
        elif node.kind == "Literal" and node.depth == 1 and nodes[0].kind == "SelectWithUnionQuery":
            found.append("INTO OUTFILE")
    return found


def check_read_only(client: Client, sql: str, parameters: dict | None = None) -> str:
    """Return the statement without a trailing `;`, or refuse anything but one read-only query of the database."""
    stripped = _COMMENTS.sub(" ", sql).strip().rstrip(";").strip()
    if not stripped:
        raise ReadOnlyViolation("empty statement")
    if ";" in stripped:
        raise ReadOnlyViolation("one statement at a time")
    kind = stripped.split(None, 1)[0].upper()
    if kind not in READ_ONLY_KINDS:
        raise ReadOnlyViolation(f"{kind} is refused: only {', '.join(READ_ONLY_KINDS)} statements run here")
    problems = _problems(_tree(client, stripped, parameters or {}))
    if problems:
        allowed = ", ".join(sorted(ALLOWED_TABLE_FUNCTIONS))
        raise ReadOnlyViolation(f"refused: {', '.join(dict.fromkeys(problems))} (this path reads the database only; table functions allowed: {allowed})")
    return stripped


def run_read_only(client: Client, sql: str, parameters: dict | None = None) -> tuple[list[str], list[tuple]]:
    """Run a checked statement on a read-only client; return column names and rows."""
    result = client.query(check_read_only(client, sql, parameters), parameters=parameters or {})
    return list(result.column_names), [tuple(row) for row in result.result_rows]
