"""Shared fixtures: one embedded ClickHouse path per test process, a database per test; one Kafka broker per session.

Helpers that are not fixtures live in tests/support (test modules import from there, never from a conftest).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.env import DATASETS, require
from tests.support.kafka_broker import KafkaBroker, KafkaUnavailable, create_topic
from tests.support.processes import kill_leftovers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _no_leftover_processes():
    """Kill the workers, replays and store holders a test left running (see tests/support/processes.py)."""
    yield
    if killed := kill_leftovers():
        print(f"killed {len(killed)} subprocess(es) the test left running: {killed}")


@pytest.fixture(autouse=True)
def _default_logging():
    """CLI tests configure structlog globally (level, stream); give every test the defaults back."""
    yield
    import structlog

    structlog.reset_defaults()


@pytest.fixture(scope="session")
def datasets() -> Path:
    require(DATASETS.is_dir(), f"{DATASETS} is missing")
    return DATASETS


@pytest.fixture(scope="session")
def embedder():
    """The process-wide packaged embedder (its model loads on first encode)."""
    from pipeline.detectors import get_embedder

    return get_embedder()


@pytest.fixture(scope="session")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # chDB allows one engine path per process: every test in this process shares it.
    return tmp_path_factory.mktemp("clickhouse")


@pytest.fixture
def settings(store_path: Path, tmp_path: Path):
    """Settings on the shared embedded store with a fresh database for this test, dropped after it.

    Opening the embedded engine loads every table on its path: a store holding each earlier
    test's database took 2 s to open by the middle of the suite, and two workers handing it to
    each other per batch fell behind the stream they were tested on."""
    from pipeline.settings import load_settings
    from pipeline.store.client import StoreUnavailable, open_store

    settings = load_settings(
        clickhouse_dsn=f"chdb://{store_path}",
        clickhouse_database=f"t_{uuid.uuid4().hex[:12]}",
        clickhouse_lock_timeout_s=30,
        targets_file=tmp_path / "targets.yaml",
    )
    yield settings
    kill_leftovers()  # a worker the test left running holds the store
    if not (store_path / "metadata" / f"{settings.clickhouse_database}.sql").exists():
        return  # the test never created its database
    try:
        with open_store(settings) as client:
            client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database} SYNC")
    except StoreUnavailable as exc:  # only the next tests' speed depends on it
        print(f"could not drop {settings.clickhouse_database}: {exc}")


@pytest.fixture
def client(settings):
    """A migrated client on this test's database."""
    from pipeline.store.client import open_store
    from pipeline.store.migrations import migrate

    with open_store(settings) as c:
        migrate(c)
        yield c


@pytest.fixture(scope="session")
def filled(store_path: Path):
    """Settings on `safemon_demo` of the session's store, filled once per process (tests/support/store_fill.py)."""
    from tests.support.store_fill import fill_store

    return fill_store(store_path)


# --- Kafka -------------------------------------------------------------------------------
# One broker per test session (start-up costs a few seconds). SAFEMON_KAFKA_BOOTSTRAP points
# the tests at a broker that is already running instead, e.g. one from `make kafka-up`.


@pytest.fixture(scope="session")
def _kafka_session_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    try:
        broker.start()
    except KafkaUnavailable as exc:
        # CI must never turn a missing toolchain into a green run of skipped tests.
        require(False, f"Kafka broker unavailable: {exc}")
    yield broker
    broker.stop()


@pytest.fixture
def kafka_broker(request: pytest.FixtureRequest) -> Iterator[KafkaBroker]:
    """The session's own broker, for tests that stop, kill or restart it."""
    require(
        not os.environ.get("SAFEMON_KAFKA_BOOTSTRAP"),
        "needs a broker this session controls; SAFEMON_KAFKA_BOOTSTRAP names an external one",
    )
    broker: KafkaBroker = request.getfixturevalue("_kafka_session_broker")
    yield broker
    # A test that killed or stopped the broker must not break the tests after it.
    if not broker.is_running():
        broker.start()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """host:port of a running broker."""
    external = os.environ.get("SAFEMON_KAFKA_BOOTSTRAP")
    if external:
        return external
    return request.getfixturevalue("_kafka_session_broker").bootstrap


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    """A fresh topic with four partitions: enough for keys to spread and for two consumers to split."""
    name = f"conversations-{uuid.uuid4().hex[:10]}"
    create_topic(kafka_bootstrap, name, 4)
    return name
