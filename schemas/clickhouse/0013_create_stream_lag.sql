-- Consumer lag as the stream workers saw it: per partition, the partition's end offset, the
-- group's position on it and the difference. Each worker writes the partitions it holds,
-- with a batch, at most every stream_lag_store_interval_s. The end offset's rise is the input
-- rate and the position's the worker's, so a growing lag can be told apart as a surge or a
-- slow-down. A store retry re-inserts the same observation: ReplacingMergeTree on the
-- observation's key keeps it once.
CREATE TABLE IF NOT EXISTS stream_lag
(
    observed_at     DateTime64(3, 'UTC'),
    consumer_group  LowCardinality(String),
    topic           LowCardinality(String),
    partition       UInt32,
    end_offset      UInt64,
    position        UInt64,
    lag             UInt64,
    worker          String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(observed_at)
ORDER BY (consumer_group, topic, partition, observed_at)
TTL toDateTime(observed_at) + INTERVAL 90 DAY;
