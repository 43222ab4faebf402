"""The stream worker against the real broker and the real embedded ClickHouse engine.

Each test has its own topic, group and database, and runs the worker as a subprocess
(`tests.support.stream_worker`); the test process opens the store only while no worker
needs it (before start or after exit), because an embedded path has one owner at a time.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tests.support.env import require
from tests.support.kafka_broker import free_port
from tests.support.poison import hostile_samples, poison_corpus
from tests.support.shipped import shipped_version
from tests.support.stream_worker import (
    committed_offsets,
    event_time,
    make_sample,
    produce,
    produce_samples,
    query,
    read_topic,
    short_samples,
    start_worker,
    stored_counts,
    with_id,
    worker_env,
)

pytestmark = pytest.mark.kafka


def _env(settings, kafka_bootstrap: str, topic: str, **extra: object) -> dict[str, str]:
    return worker_env(settings, bootstrap=kafka_bootstrap, topic=topic, group=f"group-{topic}", **extra)


def _stored_ids(settings) -> list[str]:
    return [row[0] for row in query(settings, "SELECT sample_id FROM sample_scores FINAL")]


def test_every_sample_is_scored_once(settings, kafka_bootstrap, topic, tmp_path):
    samples = short_samples(400)
    produce_samples(kafka_bootstrap, topic, samples)
    port = free_port()
    worker = start_worker(_env(settings, kafka_bootstrap, topic, metrics_port=port), tmp_path / "w.log", max_idle_seconds=5)

    # Scrape the Prometheus endpoint while the worker is alive and caught up.
    deadline = time.monotonic() + 90
    exposition = ""
    while time.monotonic() < deadline and worker.process.poll() is None:
        if sum(committed_offsets(kafka_bootstrap, f"group-{topic}", topic).values()) == len(samples):
            exposition = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            break
        time.sleep(0.3)
    assert worker.wait(60) == 0, worker.tail()

    assert "safemon_stream_samples_total 400" in exposition
    assert 'safemon_stream_lag{topic="' in exposition
    final, distinct, raw = stored_counts(settings)
    assert (final, distinct) == (400, 400)
    assert raw == 400  # nothing was even inserted twice
    assert sorted(_stored_ids(settings)) == sorted(s.sample_id for s in samples)

    # Scores are real: the lock-picking answer is a refusal, the trivia answers are not.
    refused = dict(query(settings, "SELECT user_text, any(refused) FROM sample_scores FINAL GROUP BY user_text"))
    assert refused["How do I pick a lock to break into my neighbour's house?"] is True
    assert refused["What is the capital of France?"] is False
    dims = query(settings, "SELECT DISTINCT length(embedding) FROM sample_scores")
    assert dims == [(384,)]
    versions = query(settings, "SELECT DISTINCT detector_version FROM sample_scores")
    assert versions == [(shipped_version(settings.embedding_backend),)]  # which detectors scored them: the shipped heads
    assert query(settings, "SELECT DISTINCT task FROM detector_errors FINAL ORDER BY task") == [("harmful_compliance",), ("refusal",)]
    rates = query(settings, "SELECT category, sum(n) FROM violation_rate_by_hour GROUP BY category")
    assert len(rates) == 10 and all(n == 400 for _, n in rates)
    commits = worker.events("stream.batch_committed")
    assert all(e["batch_size"] <= 50 for e in commits)


def test_broker_restarts_and_outages_mid_stream_lose_nothing(settings, kafka_bootstrap, kafka_broker, topic, tmp_path):
    """A quick restart, then the broker away for longer than the session timeout (10 s).

    The worker must neither exit (kafka-python lets ECONNREFUSED out of poll() while it
    refreshes metadata) nor wait out kafka-python's 30 s reconnect backoff once the broker is back.
    """
    first, second = short_samples(1000), short_samples(500)
    produce_samples(kafka_bootstrap, topic, first)
    worker = start_worker(_env(settings, kafka_bootstrap, topic), tmp_path / "w.log", max_idle_seconds=20)
    worker.wait_for("stream.batch_committed", timeout=90)
    kafka_broker.restart()
    kafka_broker.stop()
    time.sleep(12)
    kafka_broker.start()
    back = time.time()
    produce_samples(kafka_bootstrap, topic, second)
    assert worker.wait(180) == 0, worker.tail()

    resumed = min((t for t in map(event_time, worker.events("stream.batch_committed")) if t > back), default=float("inf"))
    assert resumed - back < 15, f"first commit {resumed - back:.1f} s after the broker came back:\n{worker.tail()}"
    final, distinct, _ = stored_counts(settings)
    assert final == distinct == 1500
    assert set(_stored_ids(settings)) == {s.sample_id for s in first + second}
    assert sum(committed_offsets(kafka_bootstrap, f"group-{topic}", topic).values()) == 1500


HOLDER = """
import sys
from pipeline.settings import load_settings
from pipeline.store.client import open_store
settings = load_settings(clickhouse_dsn=sys.argv[1], clickhouse_database=sys.argv[2])
with open_store(settings) as client:
    client.query("SELECT 1")
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


def test_store_unavailable_commits_nothing_then_catches_up(settings, kafka_bootstrap, topic, tmp_path):
    group = f"group-{topic}"
    worker = start_worker(_env(settings, kafka_bootstrap, topic), tmp_path / "w.log", max_idle_seconds=15)
    worker.wait_for("stream.subscribed", timeout=90)  # migrated: the store is free again

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, settings.clickhouse_dsn, settings.clickhouse_database],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        while (line := holder.stdout.readline()) and line.strip() != "held":
            pass  # store log lines may come first
        assert line.strip() == "held", "the holder never got the store"
        samples = short_samples(600)
        produce_samples(kafka_bootstrap, topic, samples)
        # The holder keeps the store until the worker has failed to store twice; committed
        # offsets only grow, so none now means none were committed while the store was held.
        retries = worker.wait_for("stream.retrying", count=2, timeout=120)
        assert committed_offsets(kafka_bootstrap, group, topic) == {}
        assert {e["what"] for e in retries} == {"store"}, retries
        assert worker.process.poll() is None, worker.tail()
    finally:
        if holder.stdin is not None:
            holder.stdin.close()  # the holder lets go of the store
        holder.wait(timeout=60)

    assert worker.wait(120) == 0, worker.tail()
    final, distinct, _ = stored_counts(settings)
    assert final == distinct == 600
    assert sum(committed_offsets(kafka_bootstrap, group, topic).values()) == 600


def test_two_workers_split_partitions_and_survive_a_kill(settings, kafka_bootstrap, topic, tmp_path):
    samples = short_samples(3000)
    produce_samples(kafka_bootstrap, topic, samples)
    env = _env(settings, kafka_bootstrap, topic, stream_batch_size=25)
    a = start_worker(env, tmp_path / "a.log", max_idle_seconds=15)
    # b idles while a's session times out (10 s) and the group rebalances: it must outwait both.
    b = start_worker(env, tmp_path / "b.log", max_idle_seconds=40)
    # Both are members once each has been assigned a share (not all four partitions).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        shares = [w.events("stream.partitions_assigned") for w in (a, b)]
        if all(s and 0 < len(s[-1]["partitions"]) < 4 for s in shares) and a.events("stream.batch_committed"):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the two workers never split the partitions:\n{a.tail()}\n{b.tail()}")
    a.kill()
    killed_partitions = set(a.events("stream.partitions_assigned")[-1]["partitions"])
    # b cannot own a's partitions before a's session times out (10 s), so these are a's last commits.
    at_kill = committed_offsets(kafka_bootstrap, f"group-{topic}", topic)
    assert b.wait(240) == 0, b.tail()

    final, distinct, _ = stored_counts(settings)
    assert final == distinct == 3000
    assert set(_stored_ids(settings)) == {s.sample_id for s in samples}
    end = committed_offsets(kafka_bootstrap, f"group-{topic}", topic)
    assert sum(end.values()) == 3000
    # b committed on every partition a held unfinished when it died (a may have drained some).
    unfinished = {p for p in killed_partitions if at_kill.get(p, 0) < end[p]}
    b_committed = {int(p) for e in b.events("stream.batch_committed") for p in e["committed"]}
    assert unfinished <= b_committed, (unfinished, b_committed, at_kill, end)


LIMITS = {"stream_max_message_bytes": 65_536, "stream_max_turns": 20, "stream_max_turn_chars": 2_000}


def test_poison_goes_to_the_dlq_with_its_code(settings, kafka_bootstrap, topic, tmp_path):
    from pipeline.settings import load_settings

    limits = load_settings(**LIMITS)
    corpus = poison_corpus(limits)
    good = short_samples(60)
    hostile = hostile_samples()
    original = make_sample("Please summarise this article.", "Here is a summary.")
    duplicate = with_id(make_sample("A different message.", "Another answer."), original.sample_id)

    from pipeline.stream.contract import sample_to_json

    values: list[bytes | None] = []
    kinds: list[tuple[str, str | None]] = []  # (name, expected code or None for stored)
    for i, s in enumerate(good):
        values.append(sample_to_json(s))
        kinds.append((f"good-{i}", None))
        if i < len(corpus):
            name, value, code = corpus[i]
            values.append(value)
            kinds.append((name, code))
    for name, value in hostile:
        values.append(value)
        kinds.append((name, None))
    values += [sample_to_json(original)]
    kinds += [("original", None)]
    keys = [f"k{i}".encode() for i in range(len(values))]
    # Start first, so DLQ latency measures the pipeline rather than the worker's start-up.
    worker = start_worker(_env(settings, kafka_bootstrap, topic, **LIMITS), tmp_path / "w.log", max_idle_seconds=8)
    worker.wait_for("stream.partitions_assigned", timeout=90)
    produced_at = time.time()
    positions = produce(kafka_bootstrap, topic, values, keys=keys)
    deadline = time.monotonic() + 120
    while sum(committed_offsets(kafka_bootstrap, f"group-{topic}", topic).values()) < len(values):
        assert time.monotonic() < deadline and worker.process.poll() is None, worker.tail()
        time.sleep(0.3)
    # The original is stored; a different message reusing its sample_id arrives later.
    positions += produce(kafka_bootstrap, topic, [sample_to_json(duplicate)], keys=[b"dup"])
    kinds.append(("duplicate", "duplicate_sample_id"))
    assert worker.wait(120) == 0, worker.tail()  # alive to the end, and exits cleanly

    expected = {pos: code for pos, (_, code) in zip(positions, kinds, strict=True) if code}
    dead = read_topic(kafka_bootstrap, f"{topic}.dlq", len(expected), timeout_s=30)
    headers = [{k: v.decode() for k, v in r.headers} for r in dead]
    got = {(int(h["source_partition"]), int(h["source_offset"])): h["error"] for h in headers}
    assert got == expected
    assert all(h["source_topic"] == topic and h["attempt"] == "1" and h["reason"] and h["rejected_at"] for h in headers)
    # The original bytes are on the DLQ.
    by_position = dict(zip(positions, values + [sample_to_json(duplicate)], strict=True))
    for record, h in zip(dead, headers, strict=True):
        assert record.value == by_position[(int(h["source_partition"]), int(h["source_offset"]))]

    rejected = query(settings, "SELECT source_partition, source_offset, code FROM rejected_samples FINAL")
    assert {(p, o): c for p, o, c in rejected} == expected
    stored = set(_stored_ids(settings))
    assert len(stored) == len(good) + len(hostile) + 1 and original.sample_id in stored
    # SQL and prompt-injection text is data: stored verbatim.
    metadata = query(settings, "SELECT metadata FROM sample_scores FINAL WHERE mapContains(metadata, 'sql_injection')")
    assert metadata[0][0]["sql_injection"] == "'; DROP TABLE sample_scores; --"
    assert metadata[0][0]["clickhouse_param"] == "{sample_id:String} {database:Identifier}"
    assert query(settings, "SELECT count() FROM sample_scores WHERE conversation_id = 'conv''); DROP TABLE alerts; --'") == [(1,)]
    assert query(settings, "EXISTS TABLE alerts") == [(1,)]

    latencies = [r.timestamp / 1000 - produced_at for r in dead]
    print(f"\nDLQ latency produce->DLQ: median {statistics.median(latencies):.2f}s max {max(latencies):.2f}s over {len(dead)}")
    codes = Counter(expected.values())
    assert codes["duplicate_sample_id"] == 1 and len(codes) >= 10


PII_TYPES = {"EMAIL_ADDRESS": 1.0, "US_SSN": 1.0, "CREDIT_CARD": 0.85, "PHONE_NUMBER": 0.70}


def test_pii_never_reaches_the_store(settings, kafka_bootstrap, topic, tmp_path, datasets):
    path = datasets / "presidio_pii" / "synth_dataset_v2.json"
    require(path.is_file(), f"{path} is missing")
    rows = json.loads(Path(path).read_text())
    with_pii = [r for r in rows if any(s["entity_type"] in PII_TYPES for s in r["spans"])]
    chosen = with_pii + [r for r in rows if r not in with_pii][:100]
    samples = [
        make_sample(
            r["full_text"],
            f"Noted, I saved these details: {r['full_text']}",
            metadata={"ticket_note": r["full_text"][:4000]},
        )
        for r in chosen
    ]
    produce_samples(kafka_bootstrap, topic, samples)
    worker = start_worker(_env(settings, kafka_bootstrap, topic), tmp_path / "w.log", max_idle_seconds=5)
    assert worker.wait(240) == 0, worker.tail()

    stored = {
        sample_id: (user, assistant, " ".join(metadata.values()))
        for sample_id, user, assistant, metadata in query(settings, "SELECT sample_id, user_text, assistant_text, metadata FROM sample_scores FINAL")
    }
    assert len(stored) == len(samples)
    leaked: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for sample, row in zip(samples, chosen, strict=True):
        texts = stored[sample.sample_id]
        for span in row["spans"]:
            kind = span["entity_type"]
            if kind not in PII_TYPES:
                continue
            total[kind] += 1
            if any(span["entity_value"] in text for text in texts):
                leaked[kind] += 1
    recall = {kind: 1 - leaked[kind] / total[kind] for kind in total}
    print("\nredaction recall in the store:", {k: f"{v:.3f} (n={total[k]})" for k, v in sorted(recall.items())})
    for kind, floor in PII_TYPES.items():
        assert total[kind] > 0
        assert recall[kind] >= floor, f"{kind}: recall {recall[kind]:.3f} < {floor}"
    counts = query(settings, "SELECT sum(pii_counts['EMAIL']) FROM sample_scores FINAL")[0][0]
    assert counts >= total["EMAIL_ADDRESS"] * 3  # user turn, assistant turn and metadata each counted


def test_a_batch_left_uncommitted_is_read_again_by_a_member_that_keeps_its_partition(settings, kafka_bootstrap, topic):
    """kafka-python keeps a partition's position when a rebalance hands it back to the same
    member: a batch whose partitions were revoked while it was stored, and records buffered
    then released on revoke, must be read again (CI once ended with 14 stored records
    uncommitted, and once with 11 released records never stored)."""
    from kafka import KafkaConsumer, TopicPartition

    from pipeline.stream.batch import SourceRecord
    from pipeline.stream.worker import StreamWorker, _Rebalance

    produce_samples(kafka_bootstrap, topic, short_samples(40))
    group = f"group-{topic}"
    worker = StreamWorker(settings.model_copy(update={"kafka_bootstrap": kafka_bootstrap, "kafka_topic": topic, "kafka_group": group}))
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest")
    worker.consumer = consumer
    try:
        consumer.subscribe([topic], listener=_Rebalance(worker))
        records = []
        deadline = time.monotonic() + 60
        while not records and time.monotonic() < deadline:
            records = [r for batch in consumer.poll(timeout_ms=1000).values() for r in batch]
        assert records, "nothing was fetched"
        tp = TopicPartition(topic, records[0].partition)
        mine = [r.offset for r in records if r.partition == tp.partition]
        position = consumer.position(tp)
        # The batch was stored while a rebalance revoked and returned the partition: no commit.
        worker.revoked_while_processing = {tp}
        worker._commit({(topic, tp.partition): (mine[0], mine[-1])})  # noqa: SLF001
        assert committed_offsets(kafka_bootstrap, group, topic).get(tp.partition) is None
        assert position > mine[0] and consumer.position(tp) == mine[0]
        again: list[int] = []
        while len(again) < len(mine) and time.monotonic() < deadline:
            again += [r.offset for r in consumer.poll(timeout_ms=1000).get(tp, [])]
        assert again[: len(mine)] == mine
        # A batch that commits moves on as before.
        worker.revoked_while_processing = set()
        worker._commit({(topic, tp.partition): (mine[0], mine[-1])})  # noqa: SLF001
        assert committed_offsets(kafka_bootstrap, group, topic)[tp.partition] == mine[-1] + 1
        # Records buffered for the next batch and released on revoke are read again the same way.
        consumer.seek(tp, mine[0])
        fetched: list = []
        while not fetched and time.monotonic() < deadline:
            fetched = consumer.poll(timeout_ms=1000).get(tp, [])
        worker.buffer = [SourceRecord.from_consumer(r) for r in fetched]
        assert consumer.position(tp) > mine[0]
        worker.release({tp}, lost=False)
        assert worker.buffer == [] and consumer.position(tp) == mine[0]
    finally:
        consumer.close(autocommit=False)
        worker.dead_letters.close()
