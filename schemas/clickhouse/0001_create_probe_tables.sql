-- Probe runs and their per-probe results.
-- Idempotent writes: ReplacingMergeTree on natural keys (a retried task re-inserts the
-- same keys, and the newest version wins) plus insert_deduplication_token on the writer.

CREATE TABLE IF NOT EXISTS probe_runs
(
    run_id          String,
    target          LowCardinality(String),
    suite           LowCardinality(String),
    suite_version   LowCardinality(String),
    model_version   LowCardinality(String),
    started_at      DateTime64(3, 'UTC'),
    finished_at     DateTime64(3, 'UTC'),
    n_probes        UInt32,
    n_errors        UInt32,
    error_rate      Float64,
    healthy         Bool,
    -- scored -> evaluated; outcome is set by evaluation: passed | regressed | unhealthy
    status          LowCardinality(String),
    outcome         LowCardinality(String),
    baseline_run_id String,
    updated_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (target, suite, run_id)
TTL toDateTime(started_at) + INTERVAL 3 YEAR
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS probe_results
(
    run_id              String,
    run_started_at      DateTime64(3, 'UTC'),
    target              LowCardinality(String),
    suite               LowCardinality(String),
    model_version       LowCardinality(String),
    probe_id            String,
    category            LowCardinality(String),
    expect              LowCardinality(String),
    tags                Array(LowCardinality(String)),
    prompt              String CODEC(ZSTD(3)),
    response            String CODEC(ZSTD(3)),
    error               String,
    latency_ms          Float32,
    refused             Bool,
    refusal_score       Float32,
    violation_score     Float32,
    violation_category  LowCardinality(String),
    marker_hit          Bool,
    verdict             LowCardinality(String),
    pii_redacted        UInt16,
    scored_at           DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(scored_at)
PARTITION BY toYYYYMM(run_started_at)
ORDER BY (target, suite, run_id, probe_id)
TTL toDateTime(run_started_at) + INTERVAL 2 YEAR
SETTINGS non_replicated_deduplication_window = 1000;
