-- Probe history pre-aggregated, so that the cookbook and the report read thousands of rows where
-- they read every probe result (and its FINAL merge) before. Both tables are backfilled here from
-- the history already stored, and the views of 0003 and 0006 are redefined over them with the
-- same columns and the same answers.
--
-- probe_run_categories: one row per run, category and expect with the run's counts. An insert
-- trigger cannot keep counts: a re-inserted duplicate (idempotent writes may insert a row twice;
-- probe_results collapses it on read with FINAL) would be counted twice. So the counts are
-- recomputed from the run's FINAL rows whenever its results are written
-- (pipeline/store/probes.py: write_results -> summarise_run), and a recomputed run replaces its
-- own rows (ReplacingMergeTree on the run's key, newest summarised_at wins; read with FINAL).
CREATE TABLE IF NOT EXISTS probe_run_categories
(
    target              LowCardinality(String),
    suite               LowCardinality(String),
    run_id              String,
    category            LowCardinality(String),
    expect              LowCardinality(String),
    run_started_at      DateTime64(3, 'UTC'),
    model_version       LowCardinality(String),
    detector_version    LowCardinality(String),
    probes              UInt32,
    errors              UInt32,
    -- verdict != 'error': the denominator of every rate
    answered            UInt32,
    attack_successes    UInt32,
    over_refusals       UInt32,
    summarised_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(summarised_at)
PARTITION BY toYYYYMM(run_started_at)
-- Sorted as the views group and order it; run_id last keeps the key one run's category.
ORDER BY (target, suite, category, expect, run_started_at, run_id)
TTL toDateTime(run_started_at) + INTERVAL 2 YEAR;

INSERT INTO probe_run_categories
SELECT target, suite, run_id, category, expect, any(run_started_at), any(model_version), any(detector_version),
       count(), countIf(verdict = 'error'), countIf(verdict != 'error'),
       countIf(verdict = 'attack_success'), countIf(verdict = 'over_refusal'), now64(3)
FROM probe_results FINAL
GROUP BY target, suite, run_id, category, expect;

-- probe_latest_verdicts: each probe's verdict in the newest run of each model_version, as argMax
-- states keyed by (run start, scoring time), which is what FINAL keeps of a re-scored run. A
-- duplicate changes no argMax, so an insert trigger keeps this table exactly.
CREATE TABLE IF NOT EXISTS probe_latest_verdicts
(
    target              LowCardinality(String),
    suite               LowCardinality(String),
    model_version       LowCardinality(String),
    probe_id            String,
    last_run_at         SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    category            AggregateFunction(argMax, LowCardinality(String), Tuple(DateTime64(3, 'UTC'), DateTime64(3, 'UTC'))),
    verdict             AggregateFunction(argMax, LowCardinality(String), Tuple(DateTime64(3, 'UTC'), DateTime64(3, 'UTC'))),
    run_id              AggregateFunction(argMax, String, Tuple(DateTime64(3, 'UTC'), DateTime64(3, 'UTC'))),
    prompt              AggregateFunction(argMax, String, Tuple(DateTime64(3, 'UTC'), DateTime64(3, 'UTC'))) CODEC(ZSTD(3)),
    response            AggregateFunction(argMax, String, Tuple(DateTime64(3, 'UTC'), DateTime64(3, 'UTC'))) CODEC(ZSTD(3))
)
ENGINE = AggregatingMergeTree
ORDER BY (target, suite, model_version, probe_id)
TTL toDateTime(last_run_at) + INTERVAL 2 YEAR;

-- Created before the backfill: a row inserted in between reaches the table twice, which no
-- argMax notices.
CREATE MATERIALIZED VIEW IF NOT EXISTS probe_latest_verdicts_mv TO probe_latest_verdicts AS
SELECT target, suite, model_version, probe_id, max(run_started_at) AS last_run_at,
       argMaxState(category, (run_started_at, scored_at)) AS category,
       argMaxState(verdict, (run_started_at, scored_at)) AS verdict,
       argMaxState(run_id, (run_started_at, scored_at)) AS run_id,
       argMaxState(prompt, (run_started_at, scored_at)) AS prompt,
       argMaxState(response, (run_started_at, scored_at)) AS response
FROM probe_results
GROUP BY target, suite, model_version, probe_id;

INSERT INTO probe_latest_verdicts
SELECT target, suite, model_version, probe_id, max(run_started_at),
       argMaxState(category, (run_started_at, scored_at)), argMaxState(verdict, (run_started_at, scored_at)),
       argMaxState(run_id, (run_started_at, scored_at)), argMaxState(prompt, (run_started_at, scored_at)),
       argMaxState(response, (run_started_at, scored_at))
FROM probe_results
GROUP BY target, suite, model_version, probe_id;

-- The views people and the cookbook read, now over the rollups (same columns, same answers).
CREATE OR REPLACE VIEW asr_by_category_day AS
SELECT
    toDate(run_started_at) AS day,
    target,
    suite,
    model_version,
    category,
    sum(answered) AS n,
    sum(attack_successes) AS successes,
    if(n = 0, nan, successes / n) AS asr,
    if(n = 0, nan, (asr + 1.959964 * 1.959964 / (2 * n) - 1.959964 * sqrt(asr * (1 - asr) / n + 1.959964 * 1.959964 / (4 * n * n))) / (1 + 1.959964 * 1.959964 / n)) AS ci_low,
    if(n = 0, nan, (asr + 1.959964 * 1.959964 / (2 * n) + 1.959964 * sqrt(asr * (1 - asr) / n + 1.959964 * 1.959964 / (4 * n * n))) / (1 + 1.959964 * 1.959964 / n)) AS ci_high
FROM probe_run_categories FINAL
WHERE expect = 'refuse'
GROUP BY day, target, suite, model_version, category;

CREATE OR REPLACE VIEW over_refusal_by_day AS
SELECT
    toDate(run_started_at) AS day,
    target,
    suite,
    model_version,
    sum(answered) AS n,
    sum(over_refusals) AS refusals,
    if(n = 0, nan, refusals / n) AS rate
FROM probe_run_categories FINAL
WHERE expect = 'comply'
GROUP BY day, target, suite, model_version;

CREATE OR REPLACE VIEW asr_by_model_version AS
SELECT
    r.target AS target,
    r.suite AS suite,
    r.model_version AS model_version,
    d.deploy_rank AS deploy_rank,
    d.deployed_at AS deployed_at,
    r.category AS category,
    r.n AS n,
    r.successes AS successes,
    r.asr AS asr,
    if(r.n = 0, nan, (r.asr + 1.959964 * 1.959964 / (2 * r.n) - 1.959964 * sqrt(r.asr * (1 - r.asr) / r.n + 1.959964 * 1.959964 / (4 * r.n * r.n))) / (1 + 1.959964 * 1.959964 / r.n)) AS ci_low,
    if(r.n = 0, nan, (r.asr + 1.959964 * 1.959964 / (2 * r.n) + 1.959964 * sqrt(r.asr * (1 - r.asr) / r.n + 1.959964 * 1.959964 / (4 * r.n * r.n))) / (1 + 1.959964 * 1.959964 / r.n)) AS ci_high
FROM
(
    SELECT
        target, suite, model_version, category,
        sum(answered) AS n,
        sum(attack_successes) AS successes,
        if(n = 0, nan, successes / n) AS asr
    FROM probe_run_categories FINAL
    WHERE expect = 'refuse'
    GROUP BY target, suite, model_version, category
) AS r
INNER JOIN model_deploys AS d USING (target, suite, model_version);

CREATE OR REPLACE VIEW probe_verdicts_by_model_version AS
SELECT
    p.target AS target,
    p.suite AS suite,
    p.model_version AS model_version,
    d.deploy_rank AS deploy_rank,
    p.probe_id AS probe_id,
    p.category AS category,
    p.verdict AS verdict,
    p.run_id AS run_id,
    p.prompt AS prompt,
    p.response AS response
FROM
(
    SELECT
        target, suite, model_version, probe_id,
        argMaxMerge(category) AS category,
        argMaxMerge(verdict) AS verdict,
        argMaxMerge(run_id) AS run_id,
        argMaxMerge(prompt) AS prompt,
        argMaxMerge(response) AS response
    FROM probe_latest_verdicts
    GROUP BY target, suite, model_version, probe_id
) AS p
INNER JOIN model_deploys AS d USING (target, suite, model_version);
