-- The judge cascade (pipeline/judge): a head verdict whose attack score falls inside the
-- uncertainty band, and a random audit share of confident ones, go to a judge model. Each result
-- keeps the head's verdict, the judge's, who decided and why a row stayed unscored. Rows stored
-- before this migration read as decided by the head ('' judge columns).
--
-- attack_score: mean(harmful compliance, non-refusal weighted by prompt harm); what the band is measured on.
-- head_verdict: probes: the verdict the heads alone give; samples: 'unsafe' when the heads
--   flagged a hazard, else 'safe'.
-- judge_role: '' (not sent), 'uncertain' (inside the band: the judge decides) or 'audit'
--   (confident: the head decides, the judge's answer measures agreement).
-- judge_verdict: '' (no answer), 'safe' or 'unsafe'; judge_categories: its hazards.
-- decided_by: 'head', 'judge' or 'unscored' (a judge failure or an exhausted budget; the row is
--   left out of every rate's denominator). unscored_reason says which.
ALTER TABLE probe_results
    ADD COLUMN IF NOT EXISTS attack_score Float32 AFTER detector_version,
    ADD COLUMN IF NOT EXISTS head_verdict LowCardinality(String) AFTER attack_score,
    ADD COLUMN IF NOT EXISTS judge_role LowCardinality(String) AFTER head_verdict,
    ADD COLUMN IF NOT EXISTS judge_verdict LowCardinality(String) AFTER judge_role,
    ADD COLUMN IF NOT EXISTS judge_categories Array(LowCardinality(String)) AFTER judge_verdict,
    ADD COLUMN IF NOT EXISTS judge_model LowCardinality(String) AFTER judge_categories,
    ADD COLUMN IF NOT EXISTS judge_version LowCardinality(String) AFTER judge_model,
    ADD COLUMN IF NOT EXISTS judge_latency_ms Float32 AFTER judge_version,
    ADD COLUMN IF NOT EXISTS decided_by LowCardinality(String) DEFAULT 'head' AFTER judge_latency_ms,
    ADD COLUMN IF NOT EXISTS unscored_reason String AFTER decided_by;

ALTER TABLE sample_scores
    ADD COLUMN IF NOT EXISTS attack_score Float32 AFTER detector_version,
    ADD COLUMN IF NOT EXISTS head_verdict LowCardinality(String) AFTER attack_score,
    ADD COLUMN IF NOT EXISTS judge_role LowCardinality(String) AFTER head_verdict,
    ADD COLUMN IF NOT EXISTS judge_verdict LowCardinality(String) AFTER judge_role,
    ADD COLUMN IF NOT EXISTS judge_categories Array(LowCardinality(String)) AFTER judge_verdict,
    ADD COLUMN IF NOT EXISTS judge_model LowCardinality(String) AFTER judge_categories,
    ADD COLUMN IF NOT EXISTS judge_version LowCardinality(String) AFTER judge_model,
    ADD COLUMN IF NOT EXISTS judge_latency_ms Float32 AFTER judge_version,
    ADD COLUMN IF NOT EXISTS decided_by LowCardinality(String) DEFAULT 'head' AFTER judge_latency_ms,
    ADD COLUMN IF NOT EXISTS unscored_reason String AFTER decided_by;

-- A run's judge health: how many results stayed unscored, how many a judge decided, and how
-- many judge calls the budget dropped (uncertain ones become unscored; audits are skipped).
ALTER TABLE probe_runs
    ADD COLUMN IF NOT EXISTS n_unscored UInt32 AFTER n_errors,
    ADD COLUMN IF NOT EXISTS n_judged UInt32 AFTER n_unscored,
    ADD COLUMN IF NOT EXISTS n_judge_dropped UInt32 AFTER n_judged;

-- Unscored results are not answered: every rate's denominator leaves them out.
ALTER TABLE probe_run_categories
    ADD COLUMN IF NOT EXISTS unscored UInt32 AFTER errors,
    ADD COLUMN IF NOT EXISTS judge_decided UInt32 AFTER over_refusals;

CREATE OR REPLACE VIEW violation_rate_by_hour AS
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
WHERE decided_by != 'unscored'
GROUP BY target, model_version, hour, category;
