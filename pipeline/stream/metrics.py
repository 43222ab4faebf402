"""The stream worker's health figures: a structured log line every few seconds and, when
`metrics_port` is set, the same figures in the Prometheus text format on `/metrics`.

The exposition server is a small stdlib HTTP server on a daemon thread (no extra dependency);
the figures are plain counters and gauges under one lock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from pipeline.store.lag import LagObservation

log = structlog.get_logger(__name__)

LOG_INTERVAL_S = 10.0
# Lag costs one ListOffsets request; refreshed at most this often between log lines.
LAG_INTERVAL_S = 1.0
# The request runs on the consuming thread: it may hold the stream up this long at most (the
# client's default, 30 s, stalled consumption for a minute while a broker was paused) ...
LAG_TIMEOUT_MS = 1_000
# ... and after a failure it is not asked again for this long, so a sick broker costs the
# stream at most LAG_TIMEOUT_MS every LAG_BACKOFF_S.
LAG_BACKOFF_S = 15.0
# A store step that waits this long (an outage: the path held elsewhere, a server down) is
# counted as a stall and logged when it ends.
STORE_STALL_S = 5.0


class StreamMetrics:
    """Counters and gauges of one worker process."""

    def __init__(self, *, log_interval_s: float = LOG_INTERVAL_S) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.log_interval_s = log_interval_s
        self._last_log = self.started
        self._lag_due = 0.0  # monotonic time from which lag may be asked again
        self._last_samples = 0
        self.samples = 0  # scored and stored
        self.batches = 0
        self.commits = 0
        self.rejects: Counter[str] = Counter()
        self.quality_failures = 0
        self.store_retries = 0
        self.poll_retries = 0
        self.store_seconds = 0.0  # time spent in store steps, outages included
        self.store_stalls = 0
        self._store_since: float | None = None  # monotonic start of the store step in progress
        self.lag: dict[str, int] = {}  # "topic:partition" -> end offset - position
        self.offsets: dict[tuple[str, int], tuple[int, int]] = {}  # (topic, partition) -> (end offset, position)
        self.lag_observed_at: datetime | None = None
        self.last_batch_seconds = 0.0
        self.judge_calls = 0
        self.judge_dropped = 0
        self.unscored = 0
        self._server: ThreadingHTTPServer | None = None

    def record_batch(self, *, stored: int, rejected: dict[str, int], seconds: float) -> None:
        with self._lock:
            self.batches += 1
            self.commits += 1
            self.samples += stored
            self.rejects.update(rejected)
            self.last_batch_seconds = seconds

    def record_judge(self, calls: int, dropped: int, unscored: int) -> None:
        with self._lock:
            self.judge_calls += calls
            self.judge_dropped += dropped
            self.unscored += unscored

    def record_quality(self, ok: bool) -> None:
        """One contract check's outcome (a window of batches, checked beside the scoring, so it lands later)."""
        with self._lock:
            if not ok:
                self.quality_failures += 1

    def record_store_retry(self) -> None:
        with self._lock:
            self.store_retries += 1

    def record_poll_retry(self) -> None:
        with self._lock:
            self.poll_retries += 1

    def store_began(self) -> None:
        with self._lock:
            self._store_since = time.monotonic()

    def store_ended(self) -> float:
        """End the store step in progress; returns how long it took (retries and waits included)."""
        with self._lock:
            seconds = time.monotonic() - self._store_since if self._store_since is not None else 0.0
            self._store_since = None
            self.store_seconds += seconds
            if seconds >= STORE_STALL_S:
                self.store_stalls += 1
        return seconds

    def store_pending_seconds(self) -> float:
        """How long the store step in progress has been waiting (0 when none is): an outage, live."""
        with self._lock:
            return time.monotonic() - self._store_since if self._store_since is not None else 0.0

    def update_lag(self, consumer: Any) -> None:
        """Lag per assigned partition: the partition's end offset minus the consumer's position."""
        assigned = list(consumer.assignment())
        ends = consumer.end_offsets(assigned, timeout_ms=LAG_TIMEOUT_MS) if assigned else {}
        offsets = {(tp.topic, tp.partition): (ends[tp], consumer.position(tp)) for tp in assigned if tp in ends}
        with self._lock:
            self.offsets = offsets
            self.lag = {f"{topic}:{partition}": max(0, end - position) for (topic, partition), (end, position) in offsets.items()}
            self.lag_observed_at = datetime.now(UTC)
            self._lag_due = time.monotonic() + LAG_INTERVAL_S

    def lag_observations(self, group: str, worker: str) -> list[LagObservation]:
        """The latest lag figures as rows for `stream_lag`."""
        with self._lock:
            at = self.lag_observed_at
            if at is None:
                return []
            return [LagObservation(at, group, topic, partition, end, position, worker) for (topic, partition), (end, position) in sorted(self.offsets.items())]

    def maybe_update_lag(self, consumer: Any) -> None:
        """Refresh lag if it is older than LAG_INTERVAL_S (what `/metrics` shows between log lines),
        or, after a failed request, once LAG_BACKOFF_S has passed."""
        if time.monotonic() < self._lag_due:
            return
        try:
            self.update_lag(consumer)
        except Exception as exc:  # lag is advisory: never let it stop the stream
            with self._lock:
                self._lag_due = time.monotonic() + LAG_BACKOFF_S
            log.warning("stream.lag_unavailable", error=str(exc), retry_in_s=LAG_BACKOFF_S)

    def maybe_log(self, consumer: Any | None = None, *, force: bool = False) -> None:
        """Log the figures if the interval has passed (refreshing lag from the consumer first)."""
        now = time.monotonic()
        if not force and now - self._last_log < self.log_interval_s:
            return
        if consumer is not None:
            self.maybe_update_lag(consumer)
        with self._lock:
            elapsed = max(now - self._last_log, 1e-9)
            rate = (self.samples - self._last_samples) / elapsed
            self._last_log, self._last_samples = now, self.samples
            log.info(
                "stream.metrics",
                samples=self.samples,
                samples_per_s=round(rate, 1),
                batches=self.batches,
                rejects=sum(self.rejects.values()),
                rejects_by_code=dict(self.rejects),
                quality_failures=self.quality_failures,
                store_retries=self.store_retries,
                poll_retries=self.poll_retries,
                store_stalls=self.store_stalls,
                lag=dict(self.lag),
                lag_total=sum(self.lag.values()),
            )

    def exposition(self) -> str:
        """The figures in the Prometheus text exposition format."""
        pending = self.store_pending_seconds()
        with self._lock:
            lines = [
                "# HELP safemon_stream_samples_total Samples scored and stored.",
                "# TYPE safemon_stream_samples_total counter",
                f"safemon_stream_samples_total {self.samples}",
                "# HELP safemon_stream_batches_total Batches stored and committed.",
                "# TYPE safemon_stream_batches_total counter",
                f"safemon_stream_batches_total {self.batches}",
                "# HELP safemon_stream_rejects_total Messages sent to the DLQ, by code.",
                "# TYPE safemon_stream_rejects_total counter",
                *(f'safemon_stream_rejects_total{{code="{code}"}} {n}' for code, n in sorted(self.rejects.items())),
                "# HELP safemon_stream_quality_failures_total Contract checks (a window of batches each) that failed the GX batch contract.",
                "# TYPE safemon_stream_quality_failures_total counter",
                f"safemon_stream_quality_failures_total {self.quality_failures}",
                "# HELP safemon_stream_store_retries_total Failed store attempts that were retried.",
                "# TYPE safemon_stream_store_retries_total counter",
                f"safemon_stream_store_retries_total {self.store_retries}",
                "# HELP safemon_stream_poll_retries_total Polls that failed on an unreachable broker and were retried.",
                "# TYPE safemon_stream_poll_retries_total counter",
                f"safemon_stream_poll_retries_total {self.poll_retries}",
                "# HELP safemon_stream_store_seconds_total Time spent storing batches, waits for the store included.",
                "# TYPE safemon_stream_store_seconds_total counter",
                f"safemon_stream_store_seconds_total {self.store_seconds + pending:.3f}",
                f"# HELP safemon_stream_store_stalls_total Store steps that waited {STORE_STALL_S:.0f} s or more (outages), consumption paused meanwhile.",
                "# TYPE safemon_stream_store_stalls_total counter",
                f"safemon_stream_store_stalls_total {self.store_stalls}",
                "# HELP safemon_stream_store_pending_seconds How long the store step in progress has waited; partitions stay paused until it returns.",
                "# TYPE safemon_stream_store_pending_seconds gauge",
                f"safemon_stream_store_pending_seconds {pending:.3f}",
                "# HELP safemon_stream_judge_calls_total Calls to the judge (uncertain samples and audits).",
                "# TYPE safemon_stream_judge_calls_total counter",
                f"safemon_stream_judge_calls_total {self.judge_calls}",
                "# HELP safemon_stream_judge_dropped_total Judge calls the hourly budget dropped (uncertain samples stored unscored, audits skipped).",
                "# TYPE safemon_stream_judge_dropped_total counter",
                f"safemon_stream_judge_dropped_total {self.judge_dropped}",
                "# HELP safemon_stream_unscored_total Samples stored unscored (judge failure or budget): in no rate's denominator.",
                "# TYPE safemon_stream_unscored_total counter",
                f"safemon_stream_unscored_total {self.unscored}",
                "# HELP safemon_stream_batch_seconds Duration of the last batch.",
                "# TYPE safemon_stream_batch_seconds gauge",
                f"safemon_stream_batch_seconds {self.last_batch_seconds:.6f}",
                "# HELP safemon_stream_lag Records behind the partition end, per assigned partition.",
                "# TYPE safemon_stream_lag gauge",
            ]
            for key, value in sorted(self.lag.items()):
                topic, partition = key.rsplit(":", 1)
                lines.append(f'safemon_stream_lag{{topic="{topic}",partition="{partition}"}} {value}')
        return "\n".join(lines) + "\n"

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve `/metrics` on a daemon thread; returns the bound port (0 picks a free one)."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                body = metrics.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()
        bound = self._server.server_address[1]
        log.info("stream.metrics_serving", port=bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
