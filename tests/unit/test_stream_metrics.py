"""The worker's lag figure is advisory: asking for it may never hold the stream up for long."""

from __future__ import annotations

import time

from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError

from pipeline.stream import metrics
from pipeline.stream.metrics import StreamMetrics


class _Consumer:
    """Assigned two partitions; its ListOffsets answer comes back, or times out, as told."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.asked: list[int | None] = []
        self.parts = [TopicPartition("t", 0), TopicPartition("t", 1)]

    def assignment(self):
        return set(self.parts)

    def end_offsets(self, partitions, timeout_ms=None):
        self.asked.append(timeout_ms)
        if self.fail:
            raise KafkaTimeoutError("Failed to get offsets by timestamps")
        return {tp: 100 for tp in partitions}

    def position(self, tp):
        return 40 + tp.partition


def test_lag_is_asked_with_a_short_timeout_and_backs_off_after_a_failure(monkeypatch) -> None:
    m = StreamMetrics()
    sick = _Consumer(fail=True)
    for _ in range(5):
        m.maybe_update_lag(sick)
        m.maybe_log(sick, force=True)
    # One bounded request, then nothing until the backoff has passed.
    assert sick.asked == [metrics.LAG_TIMEOUT_MS]

    real = time.monotonic
    monkeypatch.setattr(metrics.time, "monotonic", lambda: real() + metrics.LAG_BACKOFF_S + 1)
    healthy = _Consumer(fail=False)
    m.maybe_update_lag(healthy)
    assert healthy.asked == [metrics.LAG_TIMEOUT_MS]
    assert m.lag == {"t:0": 60, "t:1": 59}
    assert "safemon_stream_lag" in m.exposition()


def test_a_store_step_in_progress_shows_how_long_it_has_waited_and_a_long_one_counts_as_a_stall(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(metrics.time, "monotonic", lambda: clock[0])
    m = StreamMetrics()
    m.store_began()
    clock[0] += 1.0
    assert m.store_ended() == 1.0 and m.store_stalls == 0  # an ordinary batch
    m.store_began()
    clock[0] += metrics.STORE_STALL_S + 40
    assert "safemon_stream_store_pending_seconds 45.000" in m.exposition()
    assert m.store_ended() == metrics.STORE_STALL_S + 40
    text = m.exposition()
    assert "safemon_stream_store_pending_seconds 0.000" in text
    assert "safemon_stream_store_stalls_total 1" in text
    assert "safemon_stream_store_seconds_total 46.000" in text
