"""A broker that is away may make kafka-python's poll() raise: the worker polls again, never exits."""

from __future__ import annotations

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaConnectionError, UnsupportedVersionError

from pipeline.stream.worker import StreamWorker

TP = TopicPartition("t", 0)


class _Consumer:
    """poll() raises each error in `errors` in turn, then returns one record."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = list(errors)
        self.polls = 0

    def poll(self, timeout_ms: int, max_records: int):
        self.polls += 1
        if self.errors:
            raise self.errors.pop(0)
        return {TP: ["record"]}


def _worker(settings, consumer: _Consumer) -> StreamWorker:
    worker = StreamWorker(settings)
    worker.consumer = consumer
    return worker


def test_a_refused_connection_is_polled_again_and_counted(settings) -> None:
    consumer = _Consumer([KafkaConnectionError("111 ECONNREFUSED")] * 2)
    worker = _worker(settings, consumer)
    worker.idle_since = 0.0

    assert worker._poll(timeout_ms=0, max_records=10) == {TP: ["record"]}
    assert consumer.polls == 3
    assert worker.metrics.poll_retries == 2
    assert "safemon_stream_poll_retries_total 2" in worker.metrics.exposition()
    assert worker.idle_since > 0.0  # an unreachable broker is not idleness


def test_an_error_that_retrying_cannot_fix_is_raised(settings) -> None:
    worker = _worker(settings, _Consumer([UnsupportedVersionError("no")]))
    with pytest.raises(UnsupportedVersionError):
        worker._poll(timeout_ms=0, max_records=10)


def test_a_stop_signal_ends_the_retries_with_no_records(settings) -> None:
    consumer = _Consumer([KafkaConnectionError("111 ECONNREFUSED")] * 5)
    worker = _worker(settings, consumer)
    worker.stopping = True
    assert worker._poll(timeout_ms=0, max_records=10) == {}
    assert consumer.polls == 1
