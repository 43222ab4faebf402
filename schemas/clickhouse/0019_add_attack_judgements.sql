-- The judge inside an adaptive attack (pipeline/probes/adaptive.py): where a judge is configured,
-- an attack's answer whose attack score falls inside the band is rated by the judge while the
-- attack runs, and its verdict decides whether the attack goes on.
--
-- probe_attempts: what the judge said of each turn as the attack ran, for the score task to
--   reuse (it never asks again); judge_role '' where it was not asked (every row stored before
--   this migration).
-- probe_turns: the same columns per stored turn: the head's verdict, the judge's, who decided,
--   and why a turn was left unscored. Same meanings as in probe_results (migration 0014).
ALTER TABLE probe_attempts
    ADD COLUMN IF NOT EXISTS head_verdict LowCardinality(String) AFTER prompt,
    ADD COLUMN IF NOT EXISTS judge_role LowCardinality(String) AFTER head_verdict,
    ADD COLUMN IF NOT EXISTS judge_verdict LowCardinality(String) AFTER judge_role,
    ADD COLUMN IF NOT EXISTS judge_categories Array(LowCardinality(String)) AFTER judge_verdict,
    ADD COLUMN IF NOT EXISTS judge_model LowCardinality(String) AFTER judge_categories,
    ADD COLUMN IF NOT EXISTS judge_version LowCardinality(String) AFTER judge_model,
    ADD COLUMN IF NOT EXISTS judge_latency_ms Float32 AFTER judge_version,
    ADD COLUMN IF NOT EXISTS decided_by LowCardinality(String) DEFAULT 'head' AFTER judge_latency_ms,
    ADD COLUMN IF NOT EXISTS unscored_reason String AFTER decided_by;

ALTER TABLE probe_turns
    ADD COLUMN IF NOT EXISTS head_verdict LowCardinality(String) AFTER attack_score,
    ADD COLUMN IF NOT EXISTS judge_role LowCardinality(String) AFTER head_verdict,
    ADD COLUMN IF NOT EXISTS judge_verdict LowCardinality(String) AFTER judge_role,
    ADD COLUMN IF NOT EXISTS judge_categories Array(LowCardinality(String)) AFTER judge_verdict,
    ADD COLUMN IF NOT EXISTS judge_model LowCardinality(String) AFTER judge_categories,
    ADD COLUMN IF NOT EXISTS judge_version LowCardinality(String) AFTER judge_model,
    ADD COLUMN IF NOT EXISTS judge_latency_ms Float32 AFTER judge_version,
    ADD COLUMN IF NOT EXISTS decided_by LowCardinality(String) DEFAULT 'head' AFTER judge_latency_ms,
    ADD COLUMN IF NOT EXISTS unscored_reason String AFTER decided_by;
