"""The read-only SQL path reads the database and nothing else: no files, no network, bounded.

Each attack is tried as written and obfuscated (case, comments, whitespace, nested in
subqueries, CTEs, joins, unions, DESCRIBE and EXPLAIN); the check parses with ClickHouse's
own parser, so none of them reaches the engine.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from pipeline.store.client import READ_LIMITS, open_store
from pipeline.store.sql import ReadOnlyViolation, run_read_only
from tests.support.kafka_broker import free_port

PASSWD = "file('/etc/passwd', 'LineAsString')"


class _Recorder(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"secret page\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web_page():
    """A page on loopback that records whether anything fetched it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.hits = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/page"
    server.shutdown()


def attacks(page: str) -> dict[str, str]:
    closed = f"http://127.0.0.1:{free_port()}/"
    return {
        "file": f"SELECT * FROM {PASSWD}",
        "file, scalar": "SELECT file('/etc/passwd')",
        "file, case and comments": "select * from FiLe/* x */ (  '/etc/passwd',\n 'LineAsString' ) -- y",
        "file, in a subquery": f"SELECT count() FROM (SELECT * FROM (SELECT * FROM {PASSWD}))",
        "file, in a CTE": f"WITH leak AS (SELECT * FROM {PASSWD}) SELECT * FROM leak",
        "file, in IN": f"SELECT 1 WHERE 'root' IN (SELECT * FROM {PASSWD})",
        "file, joined": f"SELECT * FROM numbers(1) AS a JOIN {PASSWD} AS b ON 1",
        "file, in a union": f"SELECT 'x' UNION ALL SELECT * FROM {PASSWD}",
        "file, described": f"DESCRIBE TABLE {PASSWD}",
        "file, explained": f"EXPLAIN PIPELINE SELECT * FROM {PASSWD}",
        "url": f"SELECT * FROM url('{page}', 'LineAsString')",
        "url, upper case": f"SELECT * FROM URL('{page}', 'LineAsString')",
        "url, closed port": f"SELECT * FROM url('{closed}', 'LineAsString')",
        "s3": "SELECT * FROM s3('http://127.0.0.1:9/bucket/key.csv')",
        "remote": "SELECT * FROM remote('127.0.0.1:9000', system.one)",
        "executable": "SELECT * FROM executable('id', 'TSV', 'x String')",
        "into outfile": "SELECT 1 INTO OUTFILE '/tmp/safemon-leak.txt'",
        "settings": "SELECT 1 SETTINGS max_execution_time = 100000",
    }


def test_every_attack_is_refused_before_it_runs(settings, client, web_page, tmp_path) -> None:
    with open_store(settings, readonly=True) as ro:
        for name, statement in attacks(web_page).items():
            with pytest.raises(ReadOnlyViolation, match="refused"):
                run_read_only(ro, statement)
            assert _Recorder.hits == [], name
        # Generators that read nothing outside the query still run, and so do strings
        # that look like comments or statement breaks.
        assert run_read_only(ro, "SELECT sum(number) AS s FROM numbers(10)") == (["s"], [(45,)])
        assert run_read_only(ro, "SELECT 'a -- b; c' AS s -- a comment") == (["s"], [("a -- b; c",)])
        for statement in (
            "INSERT INTO probe_runs (run_id) VALUES ('x')",
            "EXPLAIN INSERT INTO probe_runs (run_id) VALUES ('x')",
            "SET readonly = 0",
            "SELECT 1; DROP TABLE alerts",
        ):
            with pytest.raises(ReadOnlyViolation, match="refused"):
                run_read_only(ro, statement)


def test_the_read_only_client_carries_the_server_users_limits(settings, client) -> None:
    with open_store(settings, readonly=True) as ro:
        applied = dict(
            ro.query("SELECT name, value FROM system.settings WHERE name IN {names:Array(String)}", parameters={"names": list(READ_LIMITS)}).result_rows
        )
        assert applied == {name: str(value) for name, value in READ_LIMITS.items()}
        with pytest.raises(Exception, match="TOO_MANY_ROWS_OR_BYTES|Limit for result exceeded"):
            run_read_only(ro, f"SELECT number FROM numbers({READ_LIMITS['max_result_rows'] + 1})")


def test_safemon_sql_refuses_a_file_read_and_names_why(settings, client, monkeypatch) -> None:
    from pipeline.cli import app
    from pipeline.settings import get_settings

    monkeypatch.setenv("SAFEMON_CLICKHOUSE_DSN", settings.clickhouse_dsn)
    monkeypatch.setenv("SAFEMON_CLICKHOUSE_DATABASE", settings.clickhouse_database)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["sql", f"SELECT * FROM {PASSWD}"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "table function file()" in result.output and "root:" not in result.output
