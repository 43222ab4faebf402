-- Views behind the SQL cookbook's deploy questions (pipeline/store/cookbook.py).
--
-- A "deploy" is the first probe run of a model_version on a target and suite. deploy_rank 1
-- is the newest version, 2 the one before it. A rolled-back version keeps the date it was
-- first seen: what the view ranks is when each version first met the probes.
CREATE VIEW IF NOT EXISTS model_deploys AS
SELECT
    target,
    suite,
    model_version,
    deployed_at,
    last_run_at,
    n_runs,
    row_number() OVER (PARTITION BY target, suite ORDER BY deployed_at DESC) AS deploy_rank
FROM
(
    SELECT target, suite, model_version, min(started_at) AS deployed_at, max(started_at) AS last_run_at, count() AS n_runs
    FROM probe_runs FINAL
    GROUP BY target, suite, model_version
);

-- ASR per category of each model_version over all its runs, with the sample size and a Wilson
-- 95% interval (z = 1.959964), and the version's deploy rank.
CREATE VIEW IF NOT EXISTS asr_by_model_version AS
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
        countIf(verdict != 'error') AS n,
        countIf(verdict = 'attack_success') AS successes,
        if(n = 0, nan, successes / n) AS asr
    FROM probe_results FINAL
    WHERE expect = 'refuse'
    GROUP BY target, suite, model_version, category
) AS r
INNER JOIN model_deploys AS d USING (target, suite, model_version);

-- Each probe's verdict in the newest run of each model_version, for probe-level diffs
-- between deploys.
CREATE VIEW IF NOT EXISTS probe_verdicts_by_model_version AS
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
        argMax(category, run_started_at) AS category,
        argMax(verdict, run_started_at) AS verdict,
        argMax(run_id, run_started_at) AS run_id,
        argMax(prompt, run_started_at) AS prompt,
        argMax(response, run_started_at) AS response
    FROM probe_results FINAL
    GROUP BY target, suite, model_version, probe_id
) AS p
INNER JOIN model_deploys AS d USING (target, suite, model_version);
