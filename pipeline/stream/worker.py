"""The stream worker: consume `conversation_sample.v1`, score each sample, store it exactly once.

One loop, one batch at a time:

1. poll until `stream_batch_size` records or `stream_batch_timeout_s` (offsets not committed);
2. take what the client has already fetched into the buffer for the next batch (pause() would
   drop it), then pause every assigned partition, so polls made while the batch is worked on
   (heartbeat polls during store retries) return no records;
3. parse each record (an InvalidSample goes to the DLQ), add the accepted samples to the
   contract window (checked with GX on a helper thread every `stream_contract_interval_s`;
   logged and counted, it drops nothing), redact, embed once per batch, run the detectors;
4. in one store session (kept open across batches, and given up between two batches when
   another process waits for the embedded chDB path, which belongs to one process at a time):
   drop ids already stored from a different offset (duplicate_sample_id), write
   `sample_scores`, `rejected_samples` and, every so often, `stream_lag`;
5. only then send the dead letters (and wait for the broker's acks), then commit, for each
   partition, the offset after the last record of the batch; resume.

Exactly-once effect: offsets are committed only after the store write returned, and every
write is idempotent (dedup token + ReplacingMergeTree keyed by the sample), so a crash at any
point re-delivers records whose rows FINAL still sees once. Store failures (a locked embedded
path included) are retried with exponential backoff for as long as they last: nothing is
committed or dropped meanwhile, the partitions stay paused, and the consumer stays in its group.

What the worker relies on from kafka-python 3.0: heartbeats are sent by the client's IO
thread whether or not `poll()` is called, so a long batch only has to stay under
`max_poll_interval_ms` between polls; during store retries the worker calls `poll(0)` on the
paused partitions between attempts, which resets that timer without fetching records.
Rebalance callbacks run on that IO thread, inside `poll()`, and may not block on consumer
APIs (commit raises there), so: a batch being processed never overlaps a rebalance except in
those heartbeat polls; records buffered but not yet processed when their partitions are
revoked (or lost) are released uncommitted, and the next owner reads them from the committed
offset; partitions revoked while a batch is being stored are left out of its commit (the rows
are written anyway and absorbed when the records come back). kafka-python keeps a partition's
position when a rebalance gives it back to the same member, so a batch left uncommitted
(revoked, or a failed commit) and records released on revoke move this member's position back.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from pipeline.records import utc_now
from pipeline.settings import Settings
from pipeline.store.client import HeldStore, open_store
from pipeline.store.detectors import write_errors
from pipeline.store.lag import LagObservation, write_lag
from pipeline.store.samples import existing_sources, write_rejections, write_scores
from pipeline.stream.batch import Accepted, Rejection, SourceRecord, StreamScorer, parse_records, split_stored_duplicates
from pipeline.stream.contract import ContractWindow, validate_facts
from pipeline.stream.dlq import DeadLetters
from pipeline.stream.metrics import STORE_STALL_S, StreamMetrics
from pipeline.stream.producer import RECONNECT_BACKOFF_MAX_MS

if TYPE_CHECKING:
    import pandas as pd

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Programming errors are not worth retrying: the process exits and nothing is committed.
_NOT_RETRIED = (TypeError, AttributeError, KeyError, NameError, AssertionError)
MAX_BACKOFF_S = 10.0
# A crashed worker's partitions move to the others after this long without its heartbeats
# (kafka-python's default is 45 s); heartbeats go out every 3 s from the client's IO thread.
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_INTERVAL_MS = 3_000


class _Rebalance(ConsumerRebalanceListener):
    """Forwards the consumer's rebalance callbacks to the worker (they run on the IO thread)."""

    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.worker.release(set(revoked), lost=False)

    def on_partitions_lost(self, lost: Any) -> None:
        self.worker.release(set(lost), lost=True)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.worker.assigned(set(assigned))


class StreamWorker:
    """One consumer in the stream group, with its scorer, dead-letter producer and metrics."""

    def __init__(self, settings: Settings, *, max_idle_seconds: float | None = None) -> None:
        self.settings = settings
        self.max_idle_seconds = max_idle_seconds
        self.metrics = StreamMetrics()
        self.dead_letters = DeadLetters(settings)
        self.scorer: StreamScorer | None = None
        self.consumer: KafkaConsumer | None = None
        self.buffer: list[SourceRecord] = []
        self.stopping = False
        self.processing = False
        self.revoked_while_processing: set[TopicPartition] = set()
        self.partition_count = 0
        self.attempts: dict[tuple[str, int, int], int] = {}
        # Seconds per stage of the current batch (fill, validate, score, store, commit), logged at its commit.
        self.stage_s: dict[str, float] = {}
        self._contract_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="contract")
        self._contract_check: Future[None] | None = None
        self.contract_window = ContractWindow(settings.stream_contract_interval_s)
        self.client_id = f"safemon-stream-{uuid.uuid4().hex[:8]}"
        self.store = HeldStore(settings)
        self._lag_stored_at: datetime | None = None  # when the last stored lag was observed
        # Since when the worker has seen no records while holding partitions and reaching the
        # broker (monotonic): an assignment or a failed poll restarts the idle clock.
        self.idle_since = time.monotonic()
        # Built once: every poll goes through it.
        self._poll_retrying = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, KafkaError) and e.retriable),
            wait=wait_exponential_jitter(initial=0.2, max=MAX_BACKOFF_S),
            stop=lambda _state: self.stopping,
            before_sleep=self._poll_failed,
            retry_error_callback=lambda _state: {},
        )

    # --- rebalance callbacks (IO thread, inside poll) -------------------------------------
    def release(self, partitions: set[TopicPartition], *, lost: bool) -> None:
        """Give partitions up: drop their unprocessed records; keep them out of an in-flight commit."""
        keys = {(tp.topic, tp.partition) for tp in partitions}
        before = len(self.buffer)
        firsts: dict[tuple[str, int], int] = {}
        for r in self.buffer:
            if (r.topic, r.partition) in keys:
                firsts[(r.topic, r.partition)] = min(r.offset, firsts.get((r.topic, r.partition), r.offset))
        self._rewind(firsts)  # drops them from the buffer too
        if self.processing:
            self.revoked_while_processing |= partitions
        log.info(
            "stream.partitions_lost" if lost else "stream.partitions_revoked",
            partitions=sorted(p for _, p in keys),
            released_records=before - len(self.buffer),
            in_flight=self.processing,
        )

    def assigned(self, partitions: set[TopicPartition]) -> None:
        # A batch being stored keeps everything paused; new partitions wait for it too.
        if self.processing and self.consumer is not None and partitions:
            self.consumer.pause(*partitions)
        self.idle_since = time.monotonic()
        log.info("stream.partitions_assigned", partitions=sorted(tp.partition for tp in partitions))

    # --- lifecycle ------------------------------------------------------------------------
    def stop(self, signum: int | None = None, _frame: Any = None) -> None:
        """Finish the current batch, commit it, and leave (SIGTERM / SIGINT)."""
        if not self.stopping:
            log.info("stream.stopping", signal=signum)
        self.stopping = True

    def prepare(self) -> None:
        """Load the model, detectors and GX, and migrate the store, before joining the group,
        so a (re)started worker takes partitions only when it can process them at once."""
        started = time.monotonic()
        self.scorer = StreamScorer(self.settings)
        self.scorer.warm_up()
        import great_expectations  # noqa: F401  (seconds to import: pay it before the first batch)

        self._retry_store(self._prepare_store, "migrate")
        log.info("stream.ready", seconds=round(time.monotonic() - started, 2))

    def _prepare_store(self) -> None:
        """Migrate the store and record the error counts of the detectors this worker scores with."""
        assert self.scorer is not None
        with open_store(self.settings, migrated=True) as client:
            write_errors(client, self.scorer.scorer.version, self.scorer.scorer.errors)

    def run(self) -> int:
        """Consume until stopped or idle for `max_idle_seconds`; return the exit code."""
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_port)
        self.prepare()
        s = self.settings
        self.consumer = KafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=s.kafka_group,
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.stream_batch_size,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
            fetch_max_bytes=max(52_428_800, s.stream_max_message_bytes * 2),
            max_partition_fetch_bytes=max(1_048_576, s.stream_max_message_bytes * 2),
        )
        self.consumer.subscribe([s.kafka_topic], listener=_Rebalance(self))
        log.info("stream.subscribed", topic=s.kafka_topic, group=s.kafka_group, bootstrap=s.kafka_bootstrap)
        subscribed_at = self.idle_since = time.monotonic()
        # Joining the group can wait out a dead member's session first: that is not idleness.
        join_grace = SESSION_TIMEOUT_MS / 1000 + (self.max_idle_seconds or 0.0)
        code = 0
        try:
            while not self.stopping:
                fill_started = time.monotonic()
                records = self._fill_batch()
                now = time.monotonic()
                self.stage_s = {"fill": now - fill_started}
                if records:
                    self._process(records)
                    self.idle_since = time.monotonic()
                elif not self.consumer.assignment() and now - subscribed_at < join_grace:
                    self.idle_since = now
                elif self.max_idle_seconds is not None and time.monotonic() - self.idle_since >= self.max_idle_seconds:
                    log.info("stream.idle_exit", idle_seconds=self.max_idle_seconds)
                    break
                if self.contract_window.due():
                    self._check_contract()
                self.store.yield_if_wanted()
                self.metrics.maybe_update_lag(self.consumer)
                self.metrics.maybe_log(self.consumer)
            if self.buffer:  # stopped while filling: finish what was polled
                self._process(self._take_buffer())
            if len(self.contract_window):
                self._check_contract()
        except _GaveUp as exc:
            log.error("stream.gave_up", reason=str(exc))
            code = 1
        finally:
            self._contract_pool.shutdown(wait=True)  # pending contract checks still log
            self.metrics.maybe_log(self.consumer, force=True)
            with suppress(Exception):
                self.consumer.close(autocommit=False)
            self.dead_letters.close()
            if self.scorer is not None:
                self.scorer.close()
            self.store.release()
            self.metrics.close()
        return code

    # --- one batch ------------------------------------------------------------------------
    def _take_buffer(self) -> list[SourceRecord]:
        records, self.buffer = self.buffer, []
        return records

    def _fill_batch(self) -> list[SourceRecord]:
        assert self.consumer is not None
        size = self.settings.stream_batch_size
        deadline = time.monotonic() + self.settings.stream_batch_timeout_s
        while len(self.buffer) < size and not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            polled = self._poll(timeout_ms=int(remaining * 1000), max_records=size - len(self.buffer))
            for records in polled.values():
                self.buffer.extend(SourceRecord.from_consumer(r) for r in records)
        return self._take_buffer()

    def _read_ahead(self) -> None:
        """Buffer the next batch from what the client has already fetched (no waiting).

        pause() makes kafka-python drop fetched but unreturned records, which resume() then has
        to fetch again; taken now, they wait in the buffer (released on revoke like any other).
        """
        polled = self._poll(timeout_ms=0, max_records=self.settings.stream_batch_size)
        for records in polled.values():
            self.buffer.extend(SourceRecord.from_consumer(r) for r in records)

    def _process(self, records: Sequence[SourceRecord]) -> None:
        assert self.consumer is not None and self.scorer is not None
        started = time.monotonic()
        ranges = _offset_ranges(records)
        self.processing = True
        self.revoked_while_processing = set()
        self._read_ahead()
        paused = set(self.consumer.assignment())
        self.consumer.pause(*paused)
        with structlog.contextvars.bound_contextvars(batch_size=len(records), offsets=_describe(ranges)):
            try:
                outcome = self._score_and_store(records)
                self._commit(ranges)
            finally:
                self.processing = False
                self.consumer.resume(*self.consumer.paused())
        stored, rejected = outcome
        seconds = time.monotonic() - started
        self.metrics.record_batch(stored=stored, rejected=_count_codes(rejected), seconds=seconds)

    def _score_and_store(self, records: Sequence[SourceRecord]) -> tuple[int, list[Rejection]]:
        assert self.scorer is not None
        validating = time.monotonic()
        parsed = parse_records(records, self.settings)
        self._add_to_contract(parsed.accepted)
        scoring = time.monotonic()
        self.stage_s["validate"] = scoring - validating
        rows = self.scorer.score(parsed.accepted)
        self.metrics.record_judge(*self.scorer.judge_figures)
        storing = time.monotonic()
        self.stage_s["score"] = storing - scoring
        rejected_at = utc_now()

        lag = self._lag_to_store()

        def store() -> tuple[int, list[Rejection]]:
            with self.store.use() as client:
                stored_from = existing_sources(client, [r["sample_id"] for r in rows])
                kept, duplicates = split_stored_duplicates(rows, stored_from)
                rejections = parsed.rejected + duplicates
                write_scores(client, [{k: v for k, v in r.items() if k != "_source"} for r in kept])
                write_rejections(client, [x.row(self._attempt(x), rejected_at) for x in rejections])
                write_lag(client, lag)
            return len(kept), rejections

        self.metrics.store_began()
        try:
            stored, rejections = self._retry_store(store, "store")
        finally:
            waited = self.metrics.store_ended()
        if waited >= STORE_STALL_S:
            log.warning("stream.store_resumed", waited_s=round(waited, 1))
        if lag:
            self._lag_stored_at = lag[0].observed_at
        self.stage_s["store"] = time.monotonic() - storing
        if rejections:
            self._retry_store(  # asking the partition count may need the broker too
                lambda: self.dead_letters.send(rejections, partitions=self._partitions(), attempt=1, rejected_at=rejected_at),
                "dlq",
            )
            for x in rejections:
                log.info(
                    "stream.rejected",
                    partition=x.source.partition,
                    offset=x.source.offset,
                    code=x.code,
                    reason=x.reason[:300],
                )
        return stored, rejections

    def _lag_to_store(self) -> list[LagObservation]:
        """The latest lag figures, to store with the batch, if the interval has passed since the last stored."""
        interval, observed = self.settings.stream_lag_store_interval_s, self.metrics.lag_observed_at
        if not interval or observed is None:
            return []
        if self._lag_stored_at is not None and (observed - self._lag_stored_at).total_seconds() < interval:
            return []
        return self.metrics.lag_observations(self.settings.kafka_group, self.client_id)

    def _add_to_contract(self, accepted: Sequence[Accepted]) -> None:
        self.contract_window.add((((a.source.topic, a.source.partition, a.source.offset), a.sample) for a in accepted), utc_now())
        if self.contract_window.due():
            self._check_contract()

    def _check_contract(self) -> None:
        """Check the contract window (Great Expectations) beside the scoring, on one helper thread.

        The contract informs (a log line and a metric) and drops nothing, so it overlaps the
        embedding instead of preceding it. At most one check is in flight: a slow one holds
        the next back, not memory.
        """
        if self._contract_check is not None:
            self._contract_check.result()
        self._contract_check = self._contract_pool.submit(self._run_contract, self.contract_window.take())

    def _run_contract(self, facts: pd.DataFrame) -> None:
        try:
            report = validate_facts(facts, self.settings)
            ok = report.success
            if not ok:
                log.warning("stream.batch_quality_failed", failures=list(report.failures), samples=len(facts))
        except Exception as exc:  # the batch contract informs; it must never stop the stream
            ok = False
            log.warning("stream.batch_quality_error", error=str(exc))
        self.metrics.record_quality(ok)

    def _attempt(self, rejection: Rejection) -> int:
        # Within one process a redelivered poison message counts its attempts; after a restart
        # it starts again at 1 (rejected_samples keeps the newest).
        key = (rejection.source.topic, rejection.source.partition, rejection.source.offset)
        self.attempts[key] = self.attempts.get(key, 0) + 1
        return self.attempts[key]

    def _partitions(self) -> int:
        if not self.partition_count:
            assert self.consumer is not None
            found = self.consumer.partitions_for_topic(self.settings.kafka_topic) or set()
            self.partition_count = max(1, len(found))
        return self.partition_count

    def _commit(self, ranges: dict[tuple[str, int], tuple[int, int]]) -> None:
        assert self.consumer is not None
        owned = set(self.consumer.assignment()) - self.revoked_while_processing
        offsets = {
            TopicPartition(topic, partition): OffsetAndMetadata(last + 1, "", -1)
            for (topic, partition), (_, last) in ranges.items()
            if TopicPartition(topic, partition) in owned
        }
        self._rewind({key: first for key, (first, _) in ranges.items() if TopicPartition(*key) not in offsets})
        if not offsets:
            log.info("stream.commit_skipped", reason="partitions revoked during the batch")
            return
        committing = time.monotonic()
        try:
            self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("stream.commit_failed", error=str(exc))
            self._rewind({key: first for key, (first, _) in ranges.items()})
            return
        self.stage_s["commit"] = time.monotonic() - committing
        log.info(
            "stream.batch_committed",
            committed={f"{tp.partition}": o.offset for tp, o in offsets.items()},
            seconds={k: round(v, 4) for k, v in self.stage_s.items()},
        )

    def _rewind(self, firsts: dict[tuple[str, int], int]) -> None:
        """Read partitions again from these offsets: records from there on were taken but not committed.

        Whoever owns such a partition next reads it from the committed offset (stored rows come
        back as redeliveries and are absorbed). But kafka-python keeps a partition's position
        when a rebalance hands it back to the same member, which would then skip them: so this
        member moves its own position back (buffered records of the partition go too). A
        partition it no longer holds is left to its new owner. Used for a batch left
        uncommitted and for buffered records released on revoke (seek does no I/O, so the
        rebalance callback may call it).
        """
        assert self.consumer is not None
        for (topic, partition), first in firsts.items():
            self.buffer = [r for r in self.buffer if (r.topic, r.partition) != (topic, partition)]
            try:
                self.consumer.seek(TopicPartition(topic, partition), first)
            except ValueError:  # no longer assigned here
                continue
            log.info("stream.rewound", partition=partition, offset=first)

    # --- retries --------------------------------------------------------------------------
    def _poll(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        """`consumer.poll`, riding out a broker that is away.

        kafka-python 3.0 lets a retriable error out of `poll()` when a metadata refresh fails
        while it resets or validates positions (`KafkaConnectionError: 111 ECONNREFUSED` during
        a broker restart). Such a poll returned nothing and moved no position, so nothing is
        lost by polling again after a back-off; a stop signal ends the retries with no records.
        """
        assert self.consumer is not None
        return self._poll_retrying(self.consumer.poll, timeout_ms=timeout_ms, max_records=max_records)

    def _poll_failed(self, state: RetryCallState) -> None:
        self.metrics.record_poll_retry()
        self.idle_since = time.monotonic()  # an unreachable broker is not idleness
        attempt, error, sleep_s = _failed_attempt(state)
        log.warning("stream.poll_failed", attempt=attempt, error=error, sleep_s=sleep_s)

    def _retry_store(self, action: Callable[[], T], what: str) -> T:
        """Run `action` until it succeeds, backing off exponentially and heart-beating between tries."""

        def before_sleep(state: RetryCallState) -> None:
            self.metrics.record_store_retry()
            attempt, error, sleep_s = _failed_attempt(state)
            log.warning("stream.retrying", what=what, attempt=attempt, error=error, sleep_s=sleep_s)
            self._heartbeat()

        def stop(state: RetryCallState) -> bool:
            return self.stopping and state.attempt_number >= 3

        retrying = Retrying(
            retry=retry_if_exception(lambda e: not isinstance(e, _NOT_RETRIED)),
            wait=wait_exponential_jitter(initial=0.5, max=MAX_BACKOFF_S),
            stop=stop,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(action)
        except _NOT_RETRIED:
            raise
        except Exception as exc:
            raise _GaveUp(f"{what} still failing after the stop signal: {exc}") from exc

    def _heartbeat(self) -> None:
        """Poll the paused partitions: keeps the member in its group without fetching records."""
        if self.consumer is None:
            return
        try:
            polled = self.consumer.poll(timeout_ms=0)
        except KafkaError as exc:
            log.warning("stream.heartbeat_poll_failed", error=str(exc))
            return
        for records in polled.values():  # only if a partition was assigned unpaused: keep them
            self.buffer.extend(SourceRecord.from_consumer(r) for r in records)
        self.consumer.pause(*self.consumer.assignment())


def _failed_attempt(state: RetryCallState) -> tuple[int, str, float]:
    """What a retry warning says: the attempt that failed, its error, and the wait before the next."""
    error = state.outcome.exception() if state.outcome else None
    sleep_s = state.next_action.sleep if state.next_action else 0.0
    return state.attempt_number, f"{type(error).__name__}: {str(error)[:300]}", round(sleep_s, 2)


class _GaveUp(RuntimeError):
    """A store or DLQ step kept failing after a stop signal; nothing of the batch was committed."""


def _offset_ranges(records: Sequence[SourceRecord]) -> dict[tuple[str, int], tuple[int, int]]:
    ranges: dict[tuple[str, int], list[int]] = defaultdict(list)
    for r in records:
        ranges[(r.topic, r.partition)].append(r.offset)
    return {key: (min(offsets), max(offsets)) for key, offsets in ranges.items()}


def _describe(ranges: dict[tuple[str, int], tuple[int, int]]) -> dict[str, str]:
    return {str(partition): f"{first}-{last}" for (_, partition), (first, last) in sorted(ranges.items())}


def _count_codes(rejections: Sequence[Rejection]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for r in rejections:
        counts[r.code] += 1
    return dict(counts)


def run_worker(settings: Settings, *, max_idle_seconds: float | None = None) -> int:
    """Run one stream worker until SIGTERM/SIGINT or `max_idle_seconds` without records; the exit code."""
    worker = StreamWorker(settings, max_idle_seconds=max_idle_seconds)
    previous = {sig: signal.signal(sig, worker.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
