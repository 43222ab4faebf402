-- The stream's tables: one scored row per production sample, one row per rejected message.
-- Idempotent writes: the worker inserts with an insert_deduplication_token derived from the
-- source topic/partition/offset range (a redelivered batch with the same records is dropped
-- by the deduplication window), and ReplacingMergeTree collapses any other re-insert of the
-- same sample on read with FINAL.
--
-- Key of sample_scores: ORDER BY (target, toDate(occurred_at), sample_id). The replacing key
-- is therefore (target, day, sample_id) within a month partition. target and occurred_at are
-- fields of the message itself, so a redelivered sample always lands on the same key: the
-- key is effectively sample_id. A different message reusing a sample_id is caught by the
-- worker (duplicate_sample_id -> DLQ) before it is stored. Leading with target and day keeps
-- the common reads (one deployment, a time window) to a few granules; a bloom filter on
-- sample_id serves the worker's duplicate look-ups, which know only the id.
CREATE TABLE IF NOT EXISTS sample_scores
(
    sample_id           String,
    occurred_at         DateTime64(3, 'UTC'),
    target              LowCardinality(String),
    model_version       LowCardinality(String),
    conversation_id     String,
    n_turns             UInt32,
    -- Redacted (PII replaced by placeholders) before they reach this table.
    user_text           String CODEC(ZSTD(3)),
    assistant_text      String CODEC(ZSTD(3)),
    refused             Bool,
    refusal_score       Float32,
    violation_scores    Map(LowCardinality(String), Float32),
    violation_score     Float32,
    violation_category  LowCardinality(String),
    flagged_categories  Array(LowCardinality(String)),
    jailbreak_score     Float32,
    jailbreak_family    LowCardinality(String),
    injection_score     Float32,
    injection_family    LowCardinality(String),
    pii_counts          Map(LowCardinality(String), UInt16),
    -- Embedding of the redacted last user turn, kept for drift tests.
    embedding           Array(Float32) CODEC(ZSTD(1)),
    metadata            Map(String, String) CODEC(ZSTD(3)),
    source_topic        LowCardinality(String),
    source_partition    UInt32,
    source_offset       UInt64,
    scored_at           DateTime64(3, 'UTC'),
    INDEX sample_id_bloom sample_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(scored_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (target, toDate(occurred_at), sample_id)
TTL toDateTime(occurred_at) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Every message the stream refused, keyed by where it came from: a redelivered poison
-- message replaces its own row. raw holds the start of the message, escaped and redacted.
CREATE TABLE IF NOT EXISTS rejected_samples
(
    source_topic        LowCardinality(String),
    source_partition    UInt32,
    source_offset       UInt64,
    code                LowCardinality(String),
    reason              String,
    sample_id           String,
    raw                 String CODEC(ZSTD(3)),
    raw_bytes           UInt64,
    attempt             UInt16,
    rejected_at         DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(rejected_at)
ORDER BY (source_topic, source_partition, source_offset)
TTL toDateTime(rejected_at) + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Per hour and hazard: how many scored samples, how many flagged, the rate and its Wilson
-- 95% interval. Every sample carries a score for every hazard, so arrayJoin over the map's
-- keys gives each category its full denominator.
CREATE VIEW IF NOT EXISTS violation_rate_by_hour AS
SELECT
    target,
    model_version,
    toStartOfHour(occurred_at) AS hour,
    arrayJoin(mapKeys(violation_scores)) AS category,
    count() AS n,
    countIf(has(flagged_categories, category)) AS violations,
    if(n = 0, nan, violations / n) AS rate,
    if(n = 0, nan, (rate + 1.959964 * 1.959964 / (2 * n) - 1.959964 * sqrt(rate * (1 - rate) / n + 1.959964 * 1.959964 / (4 * n * n))) / (1 + 1.959964 * 1.959964 / n)) AS ci_low,
    if(n = 0, nan, (rate + 1.959964 * 1.959964 / (2 * n) + 1.959964 * sqrt(rate * (1 - rate) / n + 1.959964 * 1.959964 / (4 * n * n))) / (1 + 1.959964 * 1.959964 / n)) AS ci_high
FROM sample_scores FINAL
GROUP BY target, model_version, hour, category;

CREATE VIEW IF NOT EXISTS stream_rejections_by_hour AS
SELECT
    source_topic,
    toStartOfHour(rejected_at) AS hour,
    code,
    count() AS n
FROM rejected_samples FINAL
GROUP BY source_topic, hour, code;
