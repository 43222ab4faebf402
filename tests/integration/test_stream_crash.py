"""Crash safety: SIGKILL the worker at random moments; nothing is lost, nothing is doubled.

One worker processes 5,000 samples and is killed ten times at a random point of its work
(1-6 s after it resumed committing, sooner if its backlog runs low), restarted each time,
then run until idle. What FINAL sees must be exactly the produced samples, with no
duplicate_sample_id rejections (a redelivered record is the same offset, and is absorbed
silently).
"""

from __future__ import annotations

import random
import statistics
import time
import uuid

import pytest

from tests.support.kafka_broker import create_topic
from tests.support.stream_worker import (
    committed_offsets,
    event_time,
    produce_samples,
    query,
    short_samples,
    start_worker,
    stored_counts,
    worker_env,
)

pytestmark = pytest.mark.kafka

SAMPLES = 5_000
TRIALS = 10
# Uncommitted records each incarnation starts with, at least: more than it gets through
# before it is killed (a worker that keeps its store open takes ~300 short samples/s here).
BACKLOG = 3_000
# Kill early when the uncommitted backlog falls below this (at most a few batches' worth).
LOW_WATER = 600


def test_sigkill_at_random_points_loses_and_doubles_nothing(settings, kafka_bootstrap, tmp_path):
    topic = f"crash-{uuid.uuid4().hex[:10]}"
    group = f"group-{topic}"
    create_topic(kafka_bootstrap, topic, 4)
    samples = short_samples(SAMPLES)
    produce_samples(kafka_bootstrap, topic, samples)
    env = worker_env(settings, bootstrap=kafka_bootstrap, topic=topic, group=group, stream_batch_size=20)
    rng = random.Random(20_240_601)

    recoveries: list[float] = []
    # Records still uncommitted just before each kill: the worker was busy, not idle, when it died.
    backlogs: list[int] = []

    def uncommitted() -> int:
        return len(samples) - sum(committed_offsets(kafka_bootstrap, group, topic).values())

    for trial in range(TRIALS):
        # Every incarnation must have work when it starts and when it dies: top up if low.
        if uncommitted() < BACKLOG:
            more = short_samples(BACKLOG)
            produce_samples(kafka_bootstrap, topic, more)
            samples += more
        log_path = tmp_path / f"trial-{trial}.log"
        worker = start_worker(env, log_path)
        # Recovery: restart -> first commit (model load, group join, the dead member's session expiry).
        first = worker.wait_for("stream.batch_committed", timeout=120)[0]
        recoveries.append(event_time(first) - worker.started_at)
        # A random moment 1-6 s in, or sooner if the backlog runs low: a fast machine drains
        # thousands of short samples in seconds, and a kill of an idle worker tests nothing.
        deadline = time.monotonic() + rng.uniform(1.0, 6.0)
        while time.monotonic() < deadline and uncommitted() >= LOW_WATER:
            time.sleep(0.2)
        backlogs.append(uncommitted())
        worker.kill()

    final = start_worker(env, tmp_path / "final.log", max_idle_seconds=6)
    assert final.wait(300) == 0, final.tail()

    rows, distinct, raw = stored_counts(settings)
    print(
        f"\ncrash trials: {len(recoveries)}, recovery restart->first commit: median {statistics.median(recoveries):.1f}s "
        f"max {max(recoveries):.1f}s; rows before FINAL {raw} (re-inserts absorbed: {raw - rows}); "
        f"kills with a backlog: {sum(b > 0 for b in backlogs)}/{len(backlogs)} (median {statistics.median(backlogs)} records)"
    )
    assert len(recoveries) >= TRIALS
    assert all(b > 0 for b in backlogs), "every kill must hit a busy worker"
    assert rows == distinct == len(samples) >= SAMPLES, "lost or duplicated samples"
    stored = {r[0] for r in query(settings, "SELECT sample_id FROM sample_scores FINAL")}
    assert stored == {s.sample_id for s in samples}
    assert query(settings, "SELECT count() FROM rejected_samples FINAL") == [(0,)]
    assert sum(committed_offsets(kafka_bootstrap, group, topic).values()) == len(samples)
