-- probe_results carries every column of the detection contract (pipeline.detectors.scorer.Detection),
-- as sample_scores does: probes and production samples are scored by the same detectors.
-- violation_score is the top category's score (as in sample_scores); the probe's own category
-- is in violation_scores[category].
ALTER TABLE probe_results
    ADD COLUMN IF NOT EXISTS violation_scores   Map(LowCardinality(String), Float32) AFTER refusal_score,
    ADD COLUMN IF NOT EXISTS flagged_categories Array(LowCardinality(String)) AFTER violation_category,
    ADD COLUMN IF NOT EXISTS jailbreak_score    Float32 AFTER flagged_categories,
    ADD COLUMN IF NOT EXISTS jailbreak_family   LowCardinality(String) AFTER jailbreak_score,
    ADD COLUMN IF NOT EXISTS injection_score    Float32 AFTER jailbreak_family,
    ADD COLUMN IF NOT EXISTS injection_family   LowCardinality(String) AFTER injection_score;
