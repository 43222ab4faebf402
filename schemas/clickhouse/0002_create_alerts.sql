-- Alerts are stored before they are sent; each state change inserts a newer version.
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id                String,
    fingerprint             String,
    kind                    LowCardinality(String),
    severity                LowCardinality(String),
    target                  LowCardinality(String),
    suite                   LowCardinality(String),
    model_version           LowCardinality(String),
    baseline_model_version  LowCardinality(String),
    run_id                  String,
    baseline_run_id         String,
    categories              Array(LowCardinality(String)),
    title                   String,
    summary                 String,
    details                 String CODEC(ZSTD(3)),
    created_at              DateTime64(3, 'UTC'),
    -- pending -> sent | logged | suppressed; failed deliveries stay pending and are retried
    status                  LowCardinality(String),
    attempts                UInt16,
    last_error              String,
    slack_channel           String,
    slack_ts                String,
    thread_ts               String,
    updated_at              DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (fingerprint, alert_id)
TTL toDateTime(created_at) + INTERVAL 3 YEAR;
