"""A steady stream under faults: `safemon replay` producing a file with poison mixed in, and the
exactly-once check of what the workers made of it.

Shared by the fault tests (cluster, store outage) and `bench/soak.py`: write the file, start
replay at a rate, stop it (the count it prints is what the broker acknowledged), drain, then
compare the store and the DLQ with what was acknowledged.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.stream.contract import sample_to_json
from tests.support.processes import track
from tests.support.stream_worker import committed_offsets, query, read_topic, short_samples

# Two kinds of poison: valid JSON breaking the contract, and not JSON at all.
POISON = (b'{"schema": "conversation_sample.v1", "sample_id": "not-a-sample"}', b"not json at all")


def write_replay_file(path: Path, samples: int, poison_every: int) -> list[str | None]:
    """Write `samples` samples with one poison line after every `poison_every`; return what each line is
    (its sample_id, or None for poison), in file order."""
    lines, kinds = [], []
    for i, sample in enumerate(short_samples(samples)):
        lines.append(sample_to_json(sample))
        kinds.append(sample.sample_id)
        if i % poison_every == poison_every - 1:
            lines.append(POISON[(i // poison_every) % 2])
            kinds.append(None)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return kinds


def start_replay(env: dict[str, str], file: Path, rate: float) -> subprocess.Popen[bytes]:
    """`safemon replay --file FILE --rate RATE` as a subprocess (its idempotent, acks=all producer)."""
    return track(
        subprocess.Popen(
            [str(Path(sys.executable).with_name("safemon")), "replay", "--file", str(file), "--rate", str(rate)],
            env={**env, "COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    )


def stop_replay(replay: subprocess.Popen[bytes]) -> int:
    """Interrupt replay and return how many records the broker acknowledged (it prints `produced N`)."""
    replay.send_signal(signal.SIGINT)
    output = replay.communicate(timeout=180)[0].decode(errors="replace")
    if replay.returncode != 0 or "produced " not in output:
        raise RuntimeError(f"safemon replay failed ({replay.returncode}):\n{output[-3000:]}")
    return int(output.rsplit("produced ", 1)[1].split()[0])


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's end offset."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def wait_drained(bootstrap: str, group: str, topic: str, *, timeout_s: float = 300, check: Callable[[], None] = lambda: None) -> None:
    """Wait until the group has committed every partition to its end; `check` runs on each look (e.g. workers alive)."""
    deadline = time.monotonic() + timeout_s
    while sum(committed_offsets(bootstrap, group, topic).values()) < sum(end_offsets(bootstrap, topic).values()):
        check()
        if time.monotonic() > deadline:
            raise AssertionError(f"the workers did not catch up within {timeout_s:.0f}s")
        time.sleep(0.5)


@dataclass(frozen=True)
class Outcome:
    """What the store and the DLQ hold against what the broker acknowledged."""

    acknowledged: int
    poison: int
    rows: int  # sample_scores rows FINAL sees
    distinct: int
    lost: int  # acknowledged samples not stored
    unexpected: int  # stored samples that were not acknowledged
    rejected: int  # rejected_samples rows (FINAL)
    dead_letters: int  # DLQ records, copies included
    dead_positions: int  # distinct source positions in the DLQ
    dead_values_ok: bool  # the DLQ holds only the poison sent

    @property
    def exactly_once(self) -> bool:
        expected = self.acknowledged - self.poison
        return (
            self.lost == self.unexpected == 0
            and self.rows == self.distinct == expected
            and self.rejected == self.poison == self.dead_positions
            and self.dead_values_ok
        )

    def describe(self) -> str:
        return (
            f"acknowledged {self.acknowledged} ({self.poison} poison); stored {self.rows} rows, {self.distinct} distinct, "
            f"lost {self.lost}, unexpected {self.unexpected}; rejected {self.rejected}; "
            f"DLQ {self.dead_letters} records at {self.dead_positions} source positions"
        )


def outcome(settings, bootstrap: str, topic: str, kinds: list[str | None], acknowledged: int) -> Outcome:
    """Compare the store and `<topic>.dlq` with the first `acknowledged` lines of the replayed file.

    The DLQ is at least once (a batch whose commit failed is read again and its poison sent
    again), so its copies are told apart by their source-position headers.
    """
    sent = kinds[:acknowledged]
    expected = {k for k in sent if k is not None}
    poison = sent.count(None)
    rows, distinct = query(settings, "SELECT count(), uniqExact(sample_id) FROM sample_scores FINAL")[0]
    stored = {r[0] for r in query(settings, "SELECT sample_id FROM sample_scores FINAL")}
    rejected = query(settings, "SELECT count() FROM rejected_samples FINAL")[0][0]
    dead = read_topic(bootstrap, f"{topic}.dlq", 3 * poison, timeout_s=20) if poison else []
    positions = {(h["source_partition"], h["source_offset"]) for h in ({k: v.decode() for k, v in r.headers} for r in dead)}
    return Outcome(
        acknowledged=acknowledged,
        poison=poison,
        rows=int(rows),
        distinct=int(distinct),
        lost=len(expected - stored),
        unexpected=len(stored - expected),
        rejected=int(rejected),
        dead_letters=len(dead),
        dead_positions=len(positions),
        dead_values_ok={r.value for r in dead} <= set(POISON),
    )
