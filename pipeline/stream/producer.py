"""Put conversation samples on Kafka: an idempotent producer, and replay of a JSONL file.

Messages are keyed by `conversation_id`, so every sample of one conversation lands on one
partition and is consumed in order. Replay sends each line exactly as it is in the file
(poison included, so the DLQ path can be exercised end to end); it only parses a line to
find its key, and a line that is not a JSON object with a `conversation_id` goes out
without a key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from kafka import KafkaProducer
from kafka.codec import has_lz4
from kafka.errors import KafkaTimeoutError

from pipeline.records import ConversationSample
from pipeline.settings import Settings
from pipeline.signals import stop_on_signals
from pipeline.stream.contract import sample_to_json

if TYPE_CHECKING:
    from rich.console import Console

log = structlog.get_logger(__name__)

# How long send() and the topic check wait for metadata before giving up with a clear error.
MAX_BLOCK_MS = 30_000
# How long the producer keeps retrying one record (idempotence makes the retries safe).
DELIVERY_TIMEOUT_MS = 120_000
# The longest wait between reconnects to a broker that went away (kafka-python's default is
# 30 s, the Java client's 1 s). Longer than the consumer's session timeout, a worker would
# notice a restarted broker only after its group membership had expired.
RECONNECT_BACKOFF_MAX_MS = 1_000


class DeliveryError(RuntimeError):
    """Records the broker did not acknowledge after the producer's retries, or a topic that does not exist."""


def compression() -> str:
    """lz4 when its codec is installed (fast, good on text), else gzip (always available)."""
    return "lz4" if has_lz4() else "gzip"


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """An idempotent, acks=all producer on `settings.kafka_bootstrap`; DeliveryError when no broker answers.

    kafka-python itself keeps trying to bootstrap for ~30 s, which covers a broker that is
    still starting, so there is no retry loop around it here.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()],
        "client_id": "safemon-producer",
        "enable_idempotence": True,
        "acks": "all",
        # Unbounded retries are safe with idempotence; delivery_timeout_ms bounds them in time.
        "retries": 2_147_483_647,
        "delivery_timeout_ms": DELIVERY_TIMEOUT_MS,
        "max_block_ms": MAX_BLOCK_MS,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        "linger_ms": 20,
        "compression_type": compression(),
        # Room for messages above the stream's own limit, so oversize poison can be replayed to
        # reach the DLQ; the broker's message.max.bytes still applies (after compression).
        "max_request_size": max(1_048_576, settings.stream_max_message_bytes * 2),
    }
    config.update(overrides)
    try:
        producer = KafkaProducer(**config)
    except KafkaTimeoutError as exc:
        raise DeliveryError(f"no Kafka broker answered at {settings.kafka_bootstrap} (SAFEMON_KAFKA_BOOTSTRAP): {exc}") from None
    log.info("producer.started", bootstrap=settings.kafka_bootstrap, compression=config["compression_type"])
    return producer


def key_of(value: bytes) -> bytes | None:
    """The Kafka key for a message value: its conversation_id as UTF-8, or None when it has none."""
    try:
        document = json.loads(value)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser
        return None
    conversation_id = document.get("conversation_id") if isinstance(document, dict) else None
    if not isinstance(conversation_id, str) or not conversation_id:
        return None
    try:
        return conversation_id.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape: no valid key exists
        return None


class _Deliveries:
    """Counts acknowledgements and failures reported on the producer's I/O thread."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.acked = 0
        self.failed = 0
        self.first_error: BaseException | None = None

    def on_success(self, _metadata: Any) -> None:
        self.acked += 1

    def on_error(self, error: BaseException) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = error
        log.warning("producer.delivery_failed", topic=self.topic, error=repr(error))

    def send(self, producer: KafkaProducer, value: bytes, key: bytes | None) -> None:
        producer.send(self.topic, value=value, key=key).add_callback(self.on_success).add_errback(self.on_error)

    def raise_failures(self) -> None:
        if self.failed:
            raise DeliveryError(f"{self.failed} message(s) to {self.topic!r} were not acknowledged ({self.acked} were); first error: {self.first_error!r}")


def require_topic(producer: KafkaProducer, topic: str) -> set[int]:
    """The topic's partitions; DeliveryError naming the topic when the broker does not know it."""
    try:
        return producer.partitions_for(topic)
    except KafkaTimeoutError:
        raise DeliveryError(
            f"topic {topic!r} not found within {producer.config['max_block_ms'] / 1000:g} s; create it first (brokers may not auto-create topics)"
        ) from None


def produce_samples(producer: KafkaProducer, topic: str, samples: Iterable[ConversationSample | bytes]) -> int:
    """Send samples (records, or raw message bytes keyed like replay), flush, and return how many were acknowledged."""
    deliveries = _Deliveries(topic)
    for sample in samples:
        if isinstance(sample, ConversationSample):
            deliveries.send(producer, sample_to_json(sample), sample.conversation_id.encode("utf-8"))
        else:
            deliveries.send(producer, bytes(sample), key_of(sample))
    producer.flush()
    deliveries.raise_failures()
    return deliveries.acked


def read_messages(path: Path) -> Iterator[bytes]:
    """The non-blank lines of a JSONL file as raw bytes, line endings removed, nothing else touched."""
    with path.open("rb") as lines:
        for line in lines:
            value = line.rstrip(b"\r\n")
            if value.strip():
                yield value


def replay_file(
    settings: Settings,
    path: Path,
    *,
    topic: str | None = None,
    rate: float | None = None,
    loop: bool = False,
    console: Console | None = None,
) -> int:
    """Produce every line of a JSONL file, optionally paced to `rate` messages/s and looped until interrupted.

    Returns the number of messages the broker acknowledged; raises DeliveryError when any
    was not (after the producer's retries) or the topic does not exist.
    """
    topic = topic or settings.kafka_topic
    path = Path(path)
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 messages/s, got {rate}")
    total = None if loop else sum(1 for _ in read_messages(path))
    bound = log.bind(topic=topic, file=str(path), rate=rate, loop=loop)
    producer = make_producer(settings)
    deliveries = _Deliveries(topic)
    started = time.monotonic()
    queued = 0
    try:
        partitions = require_topic(producer, topic)
        bound.info("replay.started", partitions=len(partitions), messages=total)
        with _progress(console, total) as advance, stop_on_signals() as stop:
            while not stop.is_set():
                sent_this_pass = 0
                for value in read_messages(path):
                    if rate is not None:
                        # Pace against the start time, not the last send, so delays do not accumulate.
                        delay = started + queued / rate - time.monotonic()
                        if delay > 0:
                            stop.wait(delay)
                    if stop.is_set():
                        break
                    deliveries.send(producer, value, key_of(value))
                    queued += 1
                    sent_this_pass += 1
                    advance()
                if not loop or sent_this_pass == 0:
                    break
            if stop.is_set():
                bound.info("replay.interrupted", queued=queued)
        producer.flush()
    finally:
        producer.close()
    seconds = time.monotonic() - started
    bound.info(
        "replay.finished",
        acked=deliveries.acked,
        failed=deliveries.failed,
        seconds=round(seconds, 2),
        per_second=round(queued / seconds, 1) if seconds else None,
    )
    deliveries.raise_failures()
    return deliveries.acked


@contextmanager
def _progress(console: Console | None, total: int | None) -> Iterator[Callable[[], None]]:
    """A rich progress bar on `console` (advanced once per message), or nothing in library use."""
    if console is None:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("replay", total=total)
        yield lambda: progress.advance(task)
