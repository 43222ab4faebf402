"""The store goes away for a minute, three times, while `safemon replay` produces at a steady rate.

Another process (not safemon: it ignores safemon's turn-taking lock file) opens the embedded
engine's path and holds it for OUTAGE_S. The worker's store step fails to open it (the
engine's own lock), gives up after its lock timeout, backs off and tries again, with its
partitions paused, committing nothing, and staying in its group; `/metrics` shows the step
waiting. When the path comes back the backlog is stored and committed. At the end every
acknowledged sample is stored exactly once and the DLQ holds only the poison that was sent.

Figures per outage: the rate committed before it (the replay's rate, which the worker keeps
up with), how long after the store came back the first commit landed, when the committed rate
over 10 s was back within 10% of the rate before, and when the backlog was gone.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.hold_store import StoreHolder
from tests.support.kafka_broker import free_port
from tests.support.replay_run import end_offsets, outcome, start_replay, stop_replay, wait_drained, write_replay_file
from tests.support.stream_worker import WorkerProcess, event_time, query, start_worker, worker_env

pytestmark = pytest.mark.kafka

OUTAGES = 3
OUTAGE_S = 60
RATE = 40  # messages/s
STEADY_S = 20  # the rate before each outage is measured over this long
WINDOW_S = 10  # the rate after it, over a sliding window this long
BACK_WITHIN_S = 30
SAMPLES = 20_000
POISON_EVERY = 100


def _committed_series(worker: WorkerProcess) -> list[tuple[float, int]]:
    """(time, records committed so far over all partitions) at each of the worker's commits."""
    latest: dict[str, int] = {}
    series = []
    for event in worker.events("stream.batch_committed"):
        latest.update(event["committed"])
        series.append((event_time(event), sum(latest.values())))
    return series


def _committed_at(series: list[tuple[float, int]], at: float) -> int:
    return max((total for t, total in series if t <= at), default=0)


def _rate(series: list[tuple[float, int]], start: float, end: float) -> float:
    return (_committed_at(series, end) - _committed_at(series, start)) / (end - start)


def _scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("safemon_stream_store")}


def test_three_store_outages_of_a_minute_lose_and_double_nothing(settings, kafka_bootstrap: str, topic: str, tmp_path: Path):
    group = f"group-{uuid.uuid4().hex[:8]}"
    file = tmp_path / "samples.jsonl"
    kinds = write_replay_file(file, SAMPLES, POISON_EVERY)
    port = free_port()
    env = worker_env(settings, bootstrap=kafka_bootstrap, topic=topic, group=group, metrics_port=port)
    worker = start_worker(env, tmp_path / "worker.log")
    replay = start_replay(env, file, RATE)
    store_path = settings.clickhouse_dsn.removeprefix("chdb://")

    def alive() -> None:
        assert worker.process.poll() is None, f"the worker exited:\n{worker.tail()}"

    report = []
    try:
        worker.wait_for("stream.batch_committed", timeout=180)
        for outage in range(1, OUTAGES + 1):
            time.sleep(STEADY_S + 5)
            alive()
            holder = StoreHolder(store_path, OUTAGE_S)
            held_at = holder.take()
            pending = 0.0
            while holder.holding():
                pending = max(pending, _scrape(port)["safemon_stream_store_pending_seconds"])
                alive()
                time.sleep(2)
            back_at = holder.wait()
            backlog_end = sum(end_offsets(kafka_bootstrap, topic).values())
            time.sleep(BACK_WITHIN_S + WINDOW_S)
            alive()

            series = _committed_series(worker)
            before = _rate(series, held_at - STEADY_S, held_at)
            during = [t for t, _ in series if held_at + 2 < t < back_at]
            first = min(t for t, _ in series if t > back_at) - back_at
            recovered = next(
                (
                    end - back_at
                    for end in (back_at + WINDOW_S + k * 0.5 for k in range(2 * BACK_WITHIN_S))
                    if _rate(series, end - WINDOW_S, end) >= 0.9 * before
                ),
                None,
            )
            drained = next((t - back_at for t, total in series if t > back_at and total >= backlog_end), None)
            after = _rate(series, back_at, back_at + WINDOW_S)
            report.append((outage, before, pending, len(during), first, recovered, drained, after))
            assert not during, f"outage {outage}: {len(during)} commits while the store was held"
            assert pending >= OUTAGE_S - 15, f"outage {outage}: /metrics showed the store step waiting {pending:.0f}s at most"
            assert recovered is not None and recovered <= BACK_WITHIN_S, f"outage {outage}: rate not back within {BACK_WITHIN_S}s ({report[-1]})"
    finally:
        acked = stop_replay(replay)
    wait_drained(kafka_bootstrap, group, topic, check=alive)
    metrics = _scrape(port)
    assert worker.terminate() == 0, worker.tail()

    result = outcome(settings, kafka_bootstrap, topic, kinds, acked)
    # The worker stored its lag with its batches: the backlog of each outage is on record.
    peak_lag = query(settings, "SELECT max(total) FROM (SELECT observed_at, sum(lag) AS total FROM stream_lag FINAL GROUP BY observed_at)")[0][0]
    print("\n" + result.describe() + f"; peak stored lag {peak_lag}")
    for outage, before, pending, _, first, recovered, drained, after in report:
        print(
            f"  outage {outage} ({OUTAGE_S}s): rate before {before:.1f}/s; /metrics showed the store step waiting up to {pending:.0f}s; "
            f"first commit {first:.1f}s after the store came back, {after:.0f}/s over the next {WINDOW_S}s; "
            f"the {WINDOW_S}s rate within 10% after {recovered:.1f}s, backlog gone after {drained:.1f}s"
        )
    print(f"  worker metrics at the end: {metrics}")
    assert metrics["safemon_stream_store_stalls_total"] == OUTAGES
    assert metrics["safemon_stream_store_retries_total"] >= OUTAGES
    assert len(worker.events("stream.store_resumed")) == OUTAGES
    assert result.exactly_once, result.describe()
    assert peak_lag >= RATE * OUTAGE_S / 2
