-- Which detectors scored each result (pipeline.detectors.scorer.Scorer.version: the fitted head's
-- digest, or the built-in exemplars' and rules' digest, plus the embedding backend). A probe run
-- is only compared with a baseline scored by the same version; rows stored before this
-- migration read as ''.
ALTER TABLE probe_results
    ADD COLUMN IF NOT EXISTS detector_version LowCardinality(String) AFTER injection_family;

ALTER TABLE sample_scores
    ADD COLUMN IF NOT EXISTS detector_version LowCardinality(String) AFTER injection_family;
