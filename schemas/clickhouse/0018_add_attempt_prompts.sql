-- Adaptive probes (pipeline/probes/adaptive.py): an attacker model writes the prompts during the
-- run, so the suite does not hold them.
--
-- probe_attempts.prompt: the prompt actually sent, redacted, for the score task to read; NULL for
--   suite prompts and scripted turns (rows stored before this migration read NULL), whose text
--   the suite holds.
-- probe_runs.n_attacks_cut: adaptive probes the attacker budget (SAFEMON_ATTACKER_BUDGET_PER_RUN)
--   stopped before a success or their last turn; they are stored with the turns they played, as
--   unscored.
-- probe_runs.attacker_version: which attacker made the run's adaptive prompts: the attacker's
--   model version and the versions of the prompt files used, e.g. 'attacker-7b+crescendo.v1+pair.v1'
--   ('' for a run without adaptive probes).
ALTER TABLE probe_attempts
    ADD COLUMN IF NOT EXISTS prompt Nullable(String) CODEC(ZSTD(3)) AFTER turn;

ALTER TABLE probe_runs
    ADD COLUMN IF NOT EXISTS n_attacks_cut UInt32 AFTER n_judge_dropped,
    ADD COLUMN IF NOT EXISTS attacker_version LowCardinality(String) AFTER n_attacks_cut;
