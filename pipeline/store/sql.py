"""Read-only SQL for people: one statement, of a kind that cannot write, that reads the database only.

The statement's kind is decided on ClickHouse's own parse, not on its text, so a string
literal that holds `--` or `;` is just a string; the text reaches the engine as a bound
parameter of `formatQuery` first, which refuses several statements.

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

from clickhouse_connect.driver.binding import format_query_value
from clickhouse_connect.driver.client import Client

# Root nodes of read-only statements in ClickHouse's AST: SELECT / WITH (and set operations
# on them), SHOW ..., DESCRIBE, EXPLAIN (of one of these) and EXISTS.
READ_ONLY_ROOTS = ("SelectWithUnionQuery", "SelectIntersectExceptQuery", "Show", "Describe", "Explain", "Exists")
# Table functions that generate rows and read nothing outside the query.
ALLOWED_TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "values", "null"})
# Scalar functions that read outside the database (`file('/etc/passwd')` returns the file).
DENIED_FUNCTIONS = frozenset({"file"})
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


def _one_statement(client: Client, sql: str) -> str:
    """The statement as ClickHouse formats it, parsed from a bound parameter, so nothing in it runs.

    The embedded engine runs every statement of a `;`-separated text, so the text is never
    sent as a query before this: `formatQuery` refuses several statements and drops
    comments and a trailing `;`.
    """
    if not sql.strip():
        raise ReadOnlyViolation("empty statement")
    try:
        return client.query("SELECT formatQuery({sql:String})", parameters={"sql": sql}).result_rows[0][0]
    except Exception as exc:  # a syntax error, or several statements
        raise ReadOnlyViolation(f"refused: not one statement ClickHouse can parse ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300]


def check_read_only(client: Client, sql: str, parameters: dict | None = None) -> str:
    """Return the statement to run (as ClickHouse formats it), or refuse anything but one read-only query of the database."""
    statement = _one_statement(client, sql)
    try:
        nodes = _tree(client, statement, parameters or {})
    except Exception as exc:  # e.g. a SETTINGS clause the read-only session may not apply
        raise ReadOnlyViolation(f"refused: {_first_line(exc)}") from None
    statement_kinds = [nodes[0]] + ([nodes[1]] if nodes[0].kind == "Explain" and len(nodes) > 1 else [])
    for node in statement_kinds:
        if not node.kind.startswith(READ_ONLY_ROOTS):
            raise ReadOnlyViolation(f"{node.kind} is refused: only SELECT, WITH, SHOW, DESCRIBE, EXPLAIN and EXISTS statements run here")
    problems = _problems(nodes)
    if problems:
        allowed = ", ".join(sorted(ALLOWED_TABLE_FUNCTIONS))
        raise ReadOnlyViolation(f"refused: {', '.join(dict.fromkeys(problems))} (this path reads the database only; table functions allowed: {allowed})")
    return statement


def run_read_only(client: Client, sql: str, parameters: dict | None = None) -> tuple[list[str], list[tuple]]:
    """Run a checked statement on a read-only client; return column names and rows."""
    result = client.query(check_read_only(client, sql, parameters), parameters=parameters or {})
    return list(result.column_names), [tuple(row) for row in result.result_rows]


def quoted(value: object) -> str:
    """`value` as a ClickHouse literal, escaped by the client library, for SQL people paste.

    Target names arrive in Kafka messages: `x' OR 1=1 --` must stay one string.
    """
    return format_query_value(value)
