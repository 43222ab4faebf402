-- Scripted conversations (multi-turn probes; pipeline/probes/conversation.py). A conversation is
-- one probe: its probe_results row carries the conversation's verdict, so every rate, rollup,
-- view and regression test counts conversations. Its turns are in probe_turns.
--
-- probe_attempts.turn: a conversation's user turn (1, 2, ...); 0 for a single prompt (rows
--   stored before this migration read 0). A new sorting-key column cannot have a DEFAULT.
-- probe_results.n_turns: user turns played (1 for a single prompt); first_failure_turn: the
--   turn that failed the conversation (0: none); risk: the highest attack score over the turns.
--   For a conversation, prompt, response and the detector columns are the failing turn's, or
--   the last turn's when none failed.
ALTER TABLE probe_attempts
    ADD COLUMN IF NOT EXISTS turn UInt16 AFTER probe_id,
    MODIFY ORDER BY (run_id, probe_id, turn);

ALTER TABLE probe_results
    ADD COLUMN IF NOT EXISTS n_turns UInt16 DEFAULT 1 AFTER unscored_reason,
    ADD COLUMN IF NOT EXISTS first_failure_turn UInt16 DEFAULT 0 AFTER n_turns,
    ADD COLUMN IF NOT EXISTS risk Float32 AFTER first_failure_turn;

-- One row per turn played: the turn's user text and answer (both redacted), what it expected,
-- its verdict in context, and the running risk (the highest attack score so far).
CREATE TABLE IF NOT EXISTS probe_turns
(
    run_id              String,
    run_started_at      DateTime64(3, 'UTC'),
    target              LowCardinality(String),
    suite               LowCardinality(String),
    model_version       LowCardinality(String),
    probe_id            String,
    category            LowCardinality(String),
    turn                UInt16,
    expect              LowCardinality(String),
    prompt              String CODEC(ZSTD(3)),
    response            String CODEC(ZSTD(3)),
    error               String,
    latency_ms          Float32,
    marker_hit          Bool,
    verdict             LowCardinality(String),
    pii_redacted        UInt16,
    risk                Float32,
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
    detector_version    LowCardinality(String),
    attack_score        Float32,
    scored_at           DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(scored_at)
PARTITION BY toYYYYMM(run_started_at)
ORDER BY (target, suite, run_id, probe_id, turn)
TTL toDateTime(run_started_at) + INTERVAL 2 YEAR
SETTINGS non_replicated_deduplication_window = 1000;
