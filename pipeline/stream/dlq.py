"""The dead-letter topic: rejected messages, byte for byte, with headers saying why.

A rejected record goes to `<topic>.dlq` on the same partition number it came from (the DLQ
is created with the source's partition count), keyed like the original, with headers
`error` (the contract code), `reason`, `source_topic`, `source_partition`, `source_offset`,
`attempt` and `rejected_at`. The worker sends after the store write and flushes before it
commits offsets, so a crash in between re-sends: the DLQ is at-least-once, and a consumer
of it dedupes on (source_topic, source_partition, source_offset).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import structlog
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError

from pipeline.settings import Settings
from pipeline.stream.batch import Rejection
from pipeline.stream.contract import format_timestamp
from pipeline.stream.producer import RECONNECT_BACKOFF_MAX_MS

log = structlog.get_logger(__name__)

DLQ_SUFFIX = ".dlq"


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of a source topic."""
    return f"{topic}{DLQ_SUFFIX}"


def dlq_headers(rejection: Rejection, attempt: int, rejected_at: datetime) -> list[tuple[str, bytes]]:
    """The headers a dead letter carries (all UTF-8 strings)."""
    source = rejection.source
    values = {
        "error": rejection.code,
        "reason": rejection.reason[:2000],
        "source_topic": source.topic,
        "source_partition": str(source.partition),
        "source_offset": str(source.offset),
        "attempt": str(attempt),
        "rejected_at": format_timestamp(rejected_at),
    }
    if rejection.sample_id:
        values["sample_id"] = rejection.sample_id
    return [(k, v.encode("utf-8")) for k, v in values.items()]


class DeadLetters:
    """Sends rejected records to `<topic>.dlq`, creating the topic the first time it is needed."""

    def __init__(self, settings: Settings, *, client_id: str = "safemon-stream-dlq") -> None:
        self.settings = settings
        self.client_id = client_id
        self._producer: KafkaProducer | None = None
        self._ready: set[str] = set()
        self.sent = 0

    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            # Idempotent, acks=all: a retried send cannot duplicate within one producer session.
            self._producer = KafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                client_id=self.client_id,
                acks="all",
                enable_idempotence=True,
                max_request_size=max(self.settings.stream_max_message_bytes * 2, 1_048_576),
                reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
            )
        return self._producer

    def ensure_topic(self, source_topic: str, partitions: int) -> str:
        """Create the DLQ of `source_topic` with `partitions` partitions unless it exists."""
        topic = dlq_topic(source_topic)
        if topic in self._ready:
            return topic
        admin = KafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap, client_id=self.client_id)
        try:
            if topic not in admin.list_topics():
                try:
                    admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": -1}}, wait_for_metadata=True)
                    log.info("stream.dlq_created", topic=topic, partitions=partitions)
                except TopicAlreadyExistsError:
                    pass  # another worker of the group created it first
        finally:
            admin.close()
        self._ready.add(topic)
        return topic

    def send(self, rejections: Sequence[Rejection], *, partitions: int, attempt: int, rejected_at: datetime) -> int:
        """Send every rejection and wait until the broker has acknowledged all of them."""
        if not rejections:
            return 0
        futures = []
        for rejection in rejections:
            source = rejection.source
            topic = self.ensure_topic(source.topic, partitions)
            futures.append(
                self.producer.send(
                    topic,
                    value=source.value,
                    key=source.key,
                    headers=dlq_headers(rejection, attempt, rejected_at),
                    # Same partition as the source keeps a partition's dead letters in source order.
                    partition=source.partition % partitions,
                )
            )
        self.producer.flush()
        for future in futures:
            future.get(timeout=30)  # raises if any send failed: the batch is then not committed
        self.sent += len(futures)
        return len(futures)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None
