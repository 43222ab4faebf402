-- Embedding drift: one row per (target, model_version, window, method) check.
-- A retried check re-inserts the same key and the newest version wins (ReplacingMergeTree
-- on checked_at). ORDER BY serves the usual reads: one target's recent windows per method.
CREATE TABLE IF NOT EXISTS drift_results
(
    target              LowCardinality(String),
    model_version       LowCardinality(String),
    method              LowCardinality(String),
    window_start        DateTime64(3, 'UTC'),
    window_end          DateTime64(3, 'UTC'),
    -- same_hour_last_week | previous_day | model_version | period
    reference_kind      LowCardinality(String),
    reference_label     String,
    -- checked | insufficient_data | error
    status              LowCardinality(String),
    n_reference         UInt32,
    n_current           UInt32,
    n_invalid           UInt32,
    statistic           Float64,
    p_value             Float64,
    p_adjusted          Float64,
    effect_size         Float64,
    drifted             Bool,
    alerted             Bool,
    explanation         String CODEC(ZSTD(3)),
    error               String,
    checked_at          DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(checked_at)
PARTITION BY toYYYYMM(window_end)
ORDER BY (target, method, window_end, model_version)
TTL toDateTime(window_end) + INTERVAL 400 DAY;

-- The most recent check per target, model_version and method.
CREATE VIEW IF NOT EXISTS latest_drift AS
SELECT
    target,
    model_version,
    method,
    max(window_end) AS last_window_end,
    argMax(status, window_end) AS status,
    argMax(reference_label, window_end) AS reference_label,
    argMax(n_reference, window_end) AS n_reference,
    argMax(n_current, window_end) AS n_current,
    argMax(statistic, window_end) AS statistic,
    argMax(p_adjusted, window_end) AS p_adjusted,
    argMax(effect_size, window_end) AS effect_size,
    argMax(drifted, window_end) AS drifted,
    argMax(alerted, window_end) AS alerted
FROM drift_results FINAL
GROUP BY target, model_version, method;
