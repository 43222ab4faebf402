"""One client factory for the embedded chDB engine and ClickHouse servers.

The embedded engine lets one process own a path at a time, so callers open a client per
unit of work (`open_store`) and close it; opening waits while another process holds the
path, and gives up with a clear error after a deadline.

Processes take turns on an embedded path through a lock file beside it (`<path>.lock`,
flock), polled every few milliseconds: a busy stream worker frees the path only for the
moment between two batches, and retrying the engine itself (each failed start is slow, and
the retries back off to seconds) would almost never land in that gap, so a second worker or a
`safemon sql` would starve behind it. The engine's own lock error is still retried with
backoff, for holders that are not safemon.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import clickhouse_connect
import structlog
from clickhouse_connect.driver.client import Client
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from pipeline.settings import Settings

log = structlog.get_logger()


# The limits of deploy/clickhouse's read-only server user, which the embedded engine has no
# users to carry: people's SQL, the cookbook and the report get them on every read-only client.
READ_LIMITS = {
    "max_execution_time": 30,
    "timeout_overflow_mode": "throw",
    "max_memory_usage": 4_000_000_000,
    "max_rows_to_read": 2_000_000_000,
    "max_result_rows": 1_000_000,
    "result_overflow_mode": "throw",
}


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


def _target(settings: Settings, readonly: bool) -> tuple[str, bool]:
    """The DSN a client opens, and whether it is the read-only server user's (preferred for reads)."""
    readonly_user = readonly and settings.clickhouse_readonly_dsn is not None
    return resolve_dsn(settings.clickhouse_readonly_dsn if readonly_user else settings.clickhouse_dsn), readonly_user  # type: ignore[arg-type]


def _connect(settings: Settings, readonly: bool) -> Client:
    # A read-only server user (deploy/clickhouse: a readonly profile with quotas and
    # max_execution_time) is preferred for people's SQL: the server enforces it, whatever
    # the client sends. Without one, the session itself is made read-only.
    dsn, readonly_user = _target(settings, readonly)
    embedded = dsn.startswith("chdb://")
    session_settings: dict[str, Any] = {"readonly": 2, **READ_LIMITS} if readonly and not readonly_user and not embedded else {}
    client = clickhouse_connect.get_client(dsn=dsn, settings=session_settings or None)
    # A read-only server user cannot create it; the embedded store is ours to set up.
    if embedded or not readonly:
        client.command(f"CREATE DATABASE IF NOT EXISTS `{settings.clickhouse_database}`")
    client.database = settings.clickhouse_database
    # The embedded engine has no users: readonly=2 (reads, and settings other than readonly),
    # with the server user's limits; store.sql refuses SETTINGS clauses that could lift them.
    if readonly and embedded:
        for name, value in {"readonly": 2, **READ_LIMITS}.items():
            client.set_client_setting(name, str(value))
    log.debug("store.opened", readonly=readonly, via="readonly_dsn" if readonly_user else "dsn", embedded=embedded)
    return client


def _held_elsewhere(dsn: str, timeout_s: float, detail: object) -> StoreUnavailable:
    return StoreUnavailable(f"could not open {dsn} within {timeout_s:.0f}s: another process holds the embedded store ({detail})")


# How often a process waiting for an embedded path checks its lock file.
TURN_POLL_S = 0.005
# Lock file -> (its descriptor, users in this process): the turn belongs to the process, as the
# engine does, so nested or concurrent opens within one process share it.
_turns: dict[str, tuple[int, int]] = {}
_turns_lock = threading.Lock()


def _want_path(dsn: str) -> str:
    return dsn.removeprefix("chdb://") + ".want"


def others_waiting(dsn: str) -> bool:
    """Whether another process is waiting for its turn on the embedded path at `dsn`.

    A waiter holds a shared flock on `<path>.want` while it waits; an exclusive one that cannot
    be had means someone does. A long-running holder (`HeldStore`) asks this between units of
    work and gives the path up when the answer is yes.
    """
    fd = os.open(_want_path(dsn), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock


@contextmanager
def embedded_turn(dsn: str, timeout_s: float, deadline: float) -> Iterator[None]:
    """Hold `<path>.lock` (flock) while this process uses the embedded path at `dsn`; wait until
    `deadline`, saying so on `<path>.want` meanwhile."""
    lock_path = dsn.removeprefix("chdb://") + ".lock"
    with _turns_lock:
        if lock_path in _turns:
            fd, users = _turns[lock_path]
            _turns[lock_path] = (fd, users + 1)
        else:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            want = None
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if want is None:
                            want = os.open(_want_path(dsn), os.O_RDWR | os.O_CREAT, 0o600)
                            fcntl.flock(want, fcntl.LOCK_SH)
                        if time.monotonic() >= deadline:
                            os.close(fd)
                            raise _held_elsewhere(dsn, timeout_s, lock_path) from None
                        time.sleep(TURN_POLL_S)
            finally:
                if want is not None:
                    os.close(want)
            _turns[lock_path] = (fd, 1)
    try:
        yield
    finally:
        with _turns_lock:
            fd, users = _turns.pop(lock_path)
            if users > 1:
                _turns[lock_path] = (fd, users - 1)
            else:
                os.close(fd)  # releases the lock


@contextmanager
def open_store(settings: Settings, *, readonly: bool = False, migrated: bool = False) -> Iterator[Client]:
    """Open a client for one unit of work, waiting while another process holds the embedded store.

    With `migrated`, pending migrations are applied first (entry points that write). Waiting for
    the turn and then for the engine share one deadline, `clickhouse_lock_timeout_s` from now.
    """
    deadline = time.monotonic() + settings.clickhouse_lock_timeout_s
    with ExitStack() as turn:
        dsn, _ = _target(settings, readonly)
        if dsn.startswith("chdb://") and dsn != "chdb://:memory:":
            turn.enter_context(embedded_turn(dsn, settings.clickhouse_lock_timeout_s, deadline))
        client = _open_client(settings, readonly, deadline)
        try:
            if migrated:
                from pipeline.store.migrations import migrate

                migrate(client, cluster=settings.clickhouse_cluster)
            yield client
        finally:
            client.close()


def _open_client(settings: Settings, readonly: bool, deadline: float) -> Client:
    retrying = Retrying(
        retry=retry_if_exception(_is_lock_error),
        wait=wait_exponential_jitter(initial=0.1, max=2.0),
        # The first attempt always runs; retries stop at the deadline the turn's wait shared.
        stop=stop_after_delay(max(deadline - time.monotonic(), 0.0)),
        before_sleep=lambda state: log.info("store.open_retry", attempt=state.attempt_number + 1),
    )
    try:
        return retrying(_connect, settings, readonly)
    except RetryError as exc:
        raise _held_elsewhere(settings.clickhouse_dsn, settings.clickhouse_lock_timeout_s, exc.last_attempt.exception()) from None


class HeldStore:
    """A store client kept open across units of work by a long-running writer (the stream worker).

    Opening the embedded engine costs memory that chDB does not give back when it is closed
    (about 2 MB per open with safemon's tables, measured with chdb 4.4), so a worker that opened
    it for every batch grew by gigabytes an hour. Held instead, it is given up between units of
    work when another process waits for the path (`others_waiting`), after `idle_s` unused,
    and after a unit of work that failed (the next one starts from a fresh open). On a server
    DSN the client is simply reused.
    """

    def __init__(self, settings: Settings, *, idle_s: float = 30.0) -> None:
        self.settings = settings
        self.idle_s = idle_s
        self.dsn, _ = _target(settings, readonly=False)
        self.opens = 0
        self._stack: ExitStack | None = None
        self._client: Client | None = None
        self._last_used = 0.0

    @contextmanager
    def use(self) -> Iterator[Client]:
        """The held client for one unit of work, opened (waiting for the turn) if not held."""
        if self._client is None:
            stack = ExitStack()
            self._client = stack.enter_context(open_store(self.settings))
            self._stack = stack
            self.opens += 1
        try:
            yield self._client
        except BaseException:
            self.release()
            raise
        self._last_used = time.monotonic()

    def yield_if_wanted(self) -> None:
        """Between units of work: let the path go if another process waits for it, or if unused for `idle_s`."""
        if self._client is None:
            return
        idle = time.monotonic() - self._last_used >= self.idle_s
        if idle or (self.dsn.startswith("chdb://") and self.dsn != "chdb://:memory:" and others_waiting(self.dsn)):
            log.debug("store.released", reason="idle" if idle else "wanted")
            self.release()

    def release(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            stack.close()
