"""Fixtures for integration tests against real services."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.conftest import require
from tests.support.kafka_broker import KafkaBroker, KafkaUnavailable

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
