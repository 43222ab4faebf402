"""The producer on the real broker: replay keeps lines intact, keys by conversation, honours --rate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from kafka import KafkaConsumer

from pipeline.settings import load_settings
from pipeline.stream.contract import parse_sample
from pipeline.stream.producer import DeliveryError, make_producer, produce_samples, replay_file, require_topic
from tests.support.clock import FakeClock
from tests.support.env import ROOT
from tests.support.poison import fixture_samples, hostile_samples, write_fixture_samples

pytestmark = pytest.mark.kafka


@pytest.fixture
def stream_settings(kafka_bootstrap, topic):
    return load_settings(kafka_bootstrap=kafka_bootstrap, kafka_topic=topic)


def consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 30) -> list:
    """Every record of `topic` from the beginning, once `expected` have arrived (or the timeout passed)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        # Anything beyond `expected` would be a duplicate: give it a moment to show up.
        for batch in consumer.poll(timeout_ms=1000).values():
            records.extend(batch)
    finally:
        consumer.close()
    return records


def test_replay_sends_lines_as_they_are_keyed_by_conversation(stream_settings, topic, tmp_path):
    replayed = tmp_path / "replay.jsonl"
    write_fixture_samples(replayed, stream_settings)
    poison = [b"{not json", b'{"conversation_id": 42}', b"\xff\xfe binary"]
    lines = replayed.read_bytes().splitlines() + [v for _, v in hostile_samples()] + poison
    replayed.write_bytes(b"\n".join(lines) + b"\n\n")  # a blank line is not a message

    assert replay_file(stream_settings, replayed) == len(lines)
    records = consume(stream_settings.kafka_bootstrap, topic, len(lines))
    assert len(records) == len(lines)
    assert sorted(r.value for r in records) == sorted(lines)

    partitions_by_key = defaultdict(set)
    for record in records:
        if record.value in poison:
            assert record.key is None, record.value
            continue
        assert record.key == json.loads(record.value)["conversation_id"].encode()
        partitions_by_key[record.key].add(record.partition)
    assert all(len(p) == 1 for p in partitions_by_key.values()), partitions_by_key
    assert len({p for ps in partitions_by_key.values() for p in ps}) > 1  # keys actually spread

    # One conversation is read back in the order it was written.
    for key in partitions_by_key:
        in_file = [line for line in lines if line not in poison and json.loads(line)["conversation_id"].encode() == key]
        on_topic = [r.value for r in sorted(records, key=lambda r: r.offset) if r.key == key]
        assert on_topic == in_file


def test_replay_respects_the_rate(stream_settings, topic, tmp_path, monkeypatch):
    from pipeline.stream import producer as producer_module

    replayed = tmp_path / "replay.jsonl"
    write_fixture_samples(replayed, stream_settings)
    lines = replayed.read_bytes().splitlines() * 3  # 30 messages
    replayed.write_bytes(b"\n".join(lines) + b"\n")

    # Pacing reads time.monotonic() and waits on the stop event: both run on a clock the test moves.
    clock = FakeClock()

    class Unstopped:
        def is_set(self) -> bool:
            return False

        def wait(self, seconds: float) -> bool:
            clock.sleep(seconds)
            return False

    @contextmanager
    def no_signals(*_signums: int) -> Iterator[Unstopped]:
        yield Unstopped()

    sent_at: list[float] = []
    send = producer_module._Deliveries.send

    def timed_send(self, *args, **kwargs) -> None:
        sent_at.append(clock.monotonic())
        clock.advance(0.01)  # each send takes time of its own
        send(self, *args, **kwargs)

    monkeypatch.setattr(producer_module, "time", clock)
    monkeypatch.setattr(producer_module, "stop_on_signals", no_signals)
    monkeypatch.setattr(producer_module._Deliveries, "send", timed_send)
    assert replay_file(stream_settings, replayed, rate=20) == 30
    # 20/s paced against the start: message i goes out i/20 s after the first, the time spent
    # sending included (paced against the previous send, the gaps would be 0.06 s).
    assert [t - sent_at[0] for t in sent_at] == pytest.approx([i / 20 for i in range(30)])
    assert clock.sleeps == pytest.approx([0.04] * 29)  # each wait is what is left of the 0.05 s interval
    assert len(consume(stream_settings.kafka_bootstrap, topic, 30)) == 30


def test_produce_samples_round_trips_through_the_contract(stream_settings, topic):
    samples = fixture_samples(stream_settings)
    producer = make_producer(stream_settings)
    try:
        assert produce_samples(producer, topic, samples) == len(samples)
    finally:
        producer.close()
    records = consume(stream_settings.kafka_bootstrap, topic, len(samples))
    parsed = {s.sample_id: s for s in (parse_sample(r.value, stream_settings) for r in records)}
    assert parsed == {s.sample_id: s for s in samples}


def test_a_missing_topic_is_named(stream_settings):
    producer = make_producer(stream_settings, max_block_ms=1500)
    try:
        with pytest.raises(DeliveryError, match="topic 'no-such-topic' not found"):
            require_topic(producer, "no-such-topic")
    finally:
        producer.close()


def test_cli_replay_loops_until_interrupted(stream_settings, topic, tmp_path):
    replayed = tmp_path / "replay.jsonl"
    count = write_fixture_samples(replayed, stream_settings)
    env = {**os.environ, "SAFEMON_KAFKA_BOOTSTRAP": stream_settings.kafka_bootstrap, "SAFEMON_KAFKA_TOPIC": topic}
    cli = "from pipeline.cli import app; app(prog_name='safemon')"
    command = [sys.executable, "-c", cli, "replay", "--file", str(replayed), "--rate", "25", "--loop"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        records = consume(stream_settings.kafka_bootstrap, topic, count * 2 + 1)  # more than one pass
    finally:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()[-2000:]
    produced = int(stdout.decode().split("produced ")[1].split()[0])
    assert len(records) > count * 2
    assert produced >= len(records)
    assert len(consume(stream_settings.kafka_bootstrap, topic, produced)) == produced
