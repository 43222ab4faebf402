"""One client factory for the embedded chDB engine and ClickHouse servers.

The embedded engine lets one process own a path at a time, so callers open a client per
unit of work (`open_store`) and close it; opening retries with backoff while another
process holds the path, and gives up with a clear error after a deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import clickhouse_connect
import structlog
from clickhouse_connect.driver.client import Client
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from pipeline.settings import Settings

log = structlog.get_logger()


class StoreUnavailable(RuntimeError):
    """The store could not be opened before the deadline."""


def resolve_dsn(dsn: str) -> str:
    """Normalise a DSN: `chdb://relative/path` becomes `chdb:///absolute/path`."""
    if not dsn.startswith("chdb://"):
        return dsn
    location = dsn.removeprefix("chdb://")
    if location in ("", "memory", ":memory:"):
        return "chdb://:memory:"
    path = Path(location).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"chdb://{path}"


def _is_lock_error(exc: BaseException) -> bool:
    # chDB reports a path held by another process as an engine start-up failure.
    text = str(exc)
    return "Unable to open the chdb engine" in text or "Cannot lock file" in text


def _connect(settings: Settings, readonly: bool) -> Client:
    # A read-only server user (deploy/clickhouse: a readonly profile with quotas and
    # max_execution_time) is preferred for people's SQL: the server enforces it, whatever
    # the client sends. Without one, the session itself is made read-only.
    readonly_user = readonly and settings.clickhouse_readonly_dsn is not None
    dsn = resolve_dsn(settings.clickhouse_readonly_dsn if readonly_user else settings.clickhouse_dsn)  # type: ignore[arg-type]
    embedded = dsn.startswith("chdb://")
    session_settings: dict[str, Any] = {"readonly": 2} if readonly and not readonly_user and not embedded else {}
    client = clickhouse_connect.get_client(dsn=dsn, settings=session_settings or None)
    # A read-only server user cannot create it; the embedded store is ours to set up.
    if embedded or not readonly:
        client.command(f"CREATE DATABASE IF NOT EXISTS `{settings.clickhouse_database}`")
    client.database = settings.clickhouse_database
    # The embedded engine has no users: readonly=2 (reads, and settings other than readonly).
    if readonly and embedded:
        client.set_client_setting("readonly", "2")
    log.debug("store.opened", readonly=readonly, via="readonly_dsn" if readonly_user else "dsn", embedded=embedded)
    return client


@contextmanager
def open_store(settings: Settings, *, readonly: bool = False, migrated: bool = False) -> Iterator[Client]:
    """Open a client for one unit of work, retrying while the embedded store is locked.

    With `migrated`, pending migrations are applied first (entry points that write).
    """
    retrying = Retrying(
        retry=retry_if_exception(_is_lock_error),
        wait=wait_exponential_jitter(initial=0.1, max=2.0),
        stop=stop_after_delay(settings.clickhouse_lock_timeout_s),
        reraise=False,
    )
    try:
        for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    log.info("store.open_retry", attempt=attempt.retry_state.attempt_number)
                client = _connect(settings, readonly)
    except RetryError as exc:
        raise StoreUnavailable(
            f"could not open {settings.clickhouse_dsn} within {settings.clickhouse_lock_timeout_s:.0f}s: "
            f"another process holds the embedded store ({exc.last_attempt.exception()})"
        ) from None
    try:
        if migrated:
            from pipeline.store.migrations import migrate

            migrate(client, cluster=settings.clickhouse_cluster)
        yield client
    finally:
        client.close()
