-- What a probe run's `run` task received, already PII-redacted, for its `score` task to read:
-- Airflow's XCom (kept in its metadata database) then carries the run_id, not responses.
-- A retried task re-inserts the same keys and the newest version wins. Attempts are a
-- hand-over between tasks; probe_results keeps the scored copy, so they expire sooner.
CREATE TABLE IF NOT EXISTS probe_attempts
(
    run_id          String,
    probe_id        String,
    response        Nullable(String) CODEC(ZSTD(3)),
    error           Nullable(String),
    latency_ms      Float32,
    started_at      DateTime64(3, 'UTC'),
    marker_hit      Bool,
    pii_redacted    UInt16,
    stored_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(stored_at)
ORDER BY (run_id, probe_id)
TTL toDateTime(started_at) + INTERVAL 30 DAY
SETTINGS non_replicated_deduplication_window = 1000;
