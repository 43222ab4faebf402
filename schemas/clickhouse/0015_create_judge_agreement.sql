-- Head-judge agreement: of the confident head verdicts the judge also rated (the audit share,
-- judge_role = 'audit'; migration 0014), how many it agreed with. The heads call a row unsafe
-- when its head_verdict is attack_success (probes) or unsafe (samples); the judge when it
-- answered 'unsafe'. An audit the judge gave no answer to (judge_verdict = '') is not counted.
--
-- judge_audits: the audited rows of probe_results and sample_scores, narrowed to what agreement
-- needs. A plain view over both tables (FINAL) was measured first: the cookbook's question took
-- 0.7 s (1.5 s on a busy machine) over 10M probe results and 10M samples with 2% of them audited
-- (bench/sql.py), where it takes 0.04 s over this table. Insert triggers keep it, and it is
-- backfilled here. Keyed by the row it copies (a probe's run and id, a sample's day and id),
-- newest scored_at wins, so a re-inserted duplicate collapses on read with FINAL, as it does in
-- its own table. A row stored again without its audit (a redelivered sample the judge's hourly
-- budget then skipped) keeps the audit here: the judge did answer it, and the pair still
-- measures agreement.
--
-- category: a probe's own, a sample's top hazard (violation_category, 'none' when empty).
-- source keeps probes and production traffic apart: agreement on adversarial probes and on
-- production traffic need not be alike, and a rate pooled over both would move with their mix.
CREATE TABLE IF NOT EXISTS judge_audits
(
    source          LowCardinality(String),
    target          LowCardinality(String),
    -- run_started_at of a probe, occurred_at of a sample
    at              DateTime64(3, 'UTC'),
    -- '' for samples
    run_id          String,
    -- probe_id or sample_id
    id              String,
    model_version   LowCardinality(String),
    category        LowCardinality(String),
    judge_version   LowCardinality(String),
    head_unsafe     Bool,
    judge_verdict   LowCardinality(String),
    scored_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(scored_at)
PARTITION BY toYYYYMM(at)
ORDER BY (target, source, toDate(at), run_id, id)
TTL toDateTime(at) + INTERVAL 2 YEAR;

-- Created before the backfill: a row inserted in between reaches the table twice, and FINAL
-- keeps it once.
CREATE MATERIALIZED VIEW IF NOT EXISTS judge_audits_probe_mv TO judge_audits AS
SELECT 'probe' AS source, target, run_started_at AS at, run_id, probe_id AS id, model_version, category, judge_version,
       head_verdict IN ('attack_success', 'unsafe') AS head_unsafe, judge_verdict, scored_at
FROM probe_results
WHERE judge_role = 'audit';

CREATE MATERIALIZED VIEW IF NOT EXISTS judge_audits_sample_mv TO judge_audits AS
SELECT 'stream' AS source, target, occurred_at AS at, '' AS run_id, sample_id AS id, model_version,
       if(violation_category = '', 'none', violation_category) AS category, judge_version,
       head_verdict IN ('attack_success', 'unsafe') AS head_unsafe, judge_verdict, scored_at
FROM sample_scores
WHERE judge_role = 'audit';

INSERT INTO judge_audits
SELECT 'probe', target, run_started_at, run_id, probe_id, model_version, category, judge_version,
       head_verdict IN ('attack_success', 'unsafe'), judge_verdict, scored_at
FROM probe_results FINAL
WHERE judge_role = 'audit';

INSERT INTO judge_audits
SELECT 'stream', target, occurred_at, '', sample_id, model_version, if(violation_category = '', 'none', violation_category), judge_version,
       head_verdict IN ('attack_success', 'unsafe'), judge_verdict, scored_at
FROM sample_scores FINAL
WHERE judge_role = 'audit';

-- The bound of the Wilson score interval of k successes in n trials (n > 0) on the side of z:
-- z = -1.959964 gives the 95% interval's low end, 1.959964 its high end. A function, so that the
-- view and the cookbook's recipe over it write the interval once.
CREATE FUNCTION IF NOT EXISTS safemon_wilson AS (k, n, z) ->
    (k / n + z * z / (2 * n) + z * sqrt((k / n) * (1 - k / n) / n + z * z / (4 * n * n))) / (1 + z * z / n);

-- Per day, source, target, model_version, category and judge version (agreement with one judge
-- says nothing about another): audits answered, agreements, the rate and its 95% Wilson
-- interval. Every group holds at least one audit, so the rate is always defined.
CREATE VIEW IF NOT EXISTS judge_agreement_by_day AS
SELECT
    toDate(at) AS day,
    source,
    target,
    model_version,
    category,
    count() AS audited,
    countIf(head_unsafe = (judge_verdict = 'unsafe')) AS agreed,
    agreed / audited AS rate,
    safemon_wilson(agreed, audited, -1.959964) AS ci_low,
    safemon_wilson(agreed, audited, 1.959964) AS ci_high,
    judge_version
FROM judge_audits FINAL
WHERE judge_verdict != ''
GROUP BY day, source, target, model_version, category, judge_version;
