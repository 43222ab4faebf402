"""A replicated 3-node KRaft cluster through faults, while `safemon replay` produces and two workers consume.

One run, in order: five SIGKILLs of the leader of a busy partition (each node restarted and
back in sync before the next), a rolling restart of all three nodes, and a SIGSTOP of a leader
for longer than the broker session and the consumers' session timeouts. The topic has 3
replicas and min.insync.replicas 2 (the cluster's defaults), the producer is replay's
idempotent acks=all one, and 1% of the file is poison. At the end every sample the broker
acknowledged is stored exactly once (FINAL reads), `rejected_samples` (FINAL) holds exactly the
poison that was sent, the DLQ holds only that poison, each record at least once (a batch whose
commit failed is read again, and its poison sent again: the source position headers tell the
copies apart), and neither worker ever exited. Recovery per fault is the time from
the fault until, on every partition the faulty node led, the workers committed a record
written after the fault (past the partition's end offset at that moment).
"""

from __future__ import annotations

import signal
import statistics
import time
import uuid
from pathlib import Path

import pytest

from tests.support.env import require
from tests.support.kafka_broker import KafkaCluster, KafkaUnavailable, create_topic
from tests.support.replay_run import end_offsets, outcome, start_replay, stop_replay, wait_drained, write_replay_file
from tests.support.stream_worker import WorkerProcess, event_time, start_worker, worker_env

pytestmark = pytest.mark.kafka

LEADER_KILLS = 5
RATE = 30  # messages/s from safemon replay: steady, and longer than the faults take
SAMPLES = 30_000  # 1,000 s of replay: far longer than the faults take, even on a loaded machine
POISON_EVERY = 100  # 1% of the file
PAUSE_S = 14  # > broker.session.timeout.ms (3 s) and the workers' session timeout (10 s)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    cluster = KafkaCluster(tmp_path_factory.mktemp("cluster"))
    try:
        seconds = cluster.start()
    except KafkaUnavailable as exc:
        require(False, f"Kafka cluster unavailable: {exc}")
    print(f"\n3-node cluster ready in {seconds:.1f}s; RSS per node {[round(m) for m in cluster.rss_mb()]} MiB")
    yield cluster
    cluster.stop()


class Faults:
    """The run's workers and the recovery figure of each fault."""

    def __init__(self, cluster: KafkaCluster, topic: str, group: str, workers: list[WorkerProcess]) -> None:
        self.cluster, self.topic, self.group, self.workers = cluster, topic, group, workers
        self.report: list[tuple[str, int, list[int], float]] = []

    def led_by(self, node: int) -> list[int]:
        return sorted(p for p, (leader, _) in self.cluster.partitions(self.topic).items() if leader == node)

    def busy_leader(self, turn: int) -> int:
        partitions = self.cluster.partitions(self.topic)
        return partitions[turn % len(partitions)][0]

    def recovered(self, name: str, node: int, partitions: list[int], since: float, before: dict[int, int], timeout_s: float = 180) -> None:
        """Wait until the workers committed each of `partitions` past `before` (end offsets); record the time since `since`."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            done: dict[int, float] = {}
            for worker in self.workers:
                for event in worker.events("stream.batch_committed"):
                    at = event_time(event)
                    for p, offset in event["committed"].items():
                        if at > since and int(p) in partitions and offset > before[int(p)]:
                            done[int(p)] = min(done.get(int(p), at), at)
            if set(partitions) <= set(done):
                self.report.append((name, node, partitions, max(done.values()) - since))
                return
            assert time.monotonic() < deadline, f"{name}: partitions {partitions} not committed past {before} within {timeout_s}s"
            time.sleep(0.3)

    def check_alive(self) -> None:
        for worker in self.workers:
            assert worker.process.poll() is None, f"a worker exited during the faults:\n{worker.tail()}"

    def ends(self) -> dict[int, int]:
        return end_offsets(self.cluster.bootstrap, self.topic)


def test_leader_kills_a_rolling_restart_and_a_pause_lose_and_double_nothing(settings, cluster: KafkaCluster, tmp_path: Path):
    topic = f"cluster-{uuid.uuid4().hex[:10]}"
    group = f"group-{topic}"
    create_topic(cluster.bootstrap, topic, 4, replication_factor=3)
    file = tmp_path / "samples.jsonl"
    kinds = write_replay_file(file, SAMPLES, POISON_EVERY)

    env = worker_env(settings, bootstrap=cluster.bootstrap, topic=topic, group=group)
    workers = [start_worker(env, tmp_path / f"worker-{i}.log") for i in range(2)]
    replay = start_replay(env, file, RATE)
    faults = Faults(cluster, topic, group, workers)
    try:
        for worker in workers:
            worker.wait_for("stream.batch_committed", timeout=180)
        # The worker creates the DLQ on the first poison (default replication: 3); wait for it.
        deadline = time.monotonic() + 60
        while not workers[0].events("stream.dlq_created") and not workers[1].events("stream.dlq_created"):
            assert time.monotonic() < deadline, "no DLQ created"
            time.sleep(0.3)
        in_sync = [topic, f"{topic}.dlq", "__consumer_offsets"]
        cluster.wait_in_sync(in_sync)

        for turn in range(LEADER_KILLS):
            node = faults.busy_leader(turn)
            led, before, at = faults.led_by(node), faults.ends(), time.time()
            cluster.signal(node, signal.SIGKILL)
            faults.recovered(f"leader kill {turn + 1}", node, led, at, before)
            cluster.start(node)
            cluster.wait_in_sync(in_sync)

        for node in (1, 2, 3):
            led, before, at = faults.led_by(node), faults.ends(), time.time()
            cluster.stop(node)
            cluster.start(node)
            if led:
                faults.recovered(f"rolling restart, node {node}", node, led, at, before)
            cluster.wait_in_sync(in_sync)

        node = faults.busy_leader(0)
        led, before, at = faults.led_by(node), faults.ends(), time.time()
        cluster.signal(node, signal.SIGSTOP)
        time.sleep(PAUSE_S)
        cluster.signal(node, signal.SIGCONT)
        faults.recovered(f"SIGSTOP {PAUSE_S}s", node, led, at, before)
        cluster.wait_in_sync(in_sync)
        faults.check_alive()
    finally:
        acked = stop_replay(replay)
    assert acked < len(kinds), "replay ran out before the faults ended: raise SAMPLES"

    # Drain: every acknowledged record committed, then both workers stop cleanly.
    wait_drained(cluster.bootstrap, group, topic, check=faults.check_alive)
    assert sum(faults.ends().values()) == acked
    for worker in workers:
        assert worker.terminate() == 0, worker.tail()

    result = outcome(settings, cluster.bootstrap, topic, kinds, acked)
    print("\n" + result.describe())
    for name, node, partitions, seconds in faults.report:
        print(f"  {name:28s} node {node} led partitions {partitions}: a record written after the fault committed on each after {seconds:.1f}s")
    recoveries = [r[3] for r in faults.report]
    print(f"  recovery median {statistics.median(recoveries):.1f}s, max {max(recoveries):.1f}s over {len(recoveries)} faults")
    assert sum(1 for r in faults.report if r[0].startswith("leader kill")) == LEADER_KILLS
    assert result.exactly_once, result.describe()
