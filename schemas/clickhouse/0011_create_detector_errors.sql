-- How often each detector version is wrong, from its model card (docs/model_card.md): the
-- confusion counts on rows held out of its fitting. `refusal` corrects attack success rates
-- (attack success is "not refused"), `harmful_compliance` corrects violation rates. Written by
-- the probe runner and the stream worker for the version they score with, when that version has
-- a card (the shipped heads, calibrated or not, where the calibration left the task's threshold).
CREATE TABLE IF NOT EXISTS detector_errors
(
    detector_version LowCardinality(String),
    task             LowCardinality(String),
    tp               UInt32,
    fn               UInt32,
    tn               UInt32,
    fp               UInt32,
    measured_on      String,
    recorded_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(recorded_at)
ORDER BY (detector_version, task);

-- Rogan-Gladen: the true rate behind a measured k of n, given the detector's sensitivity
-- (se_k of se_n) and specificity (sp_k of sp_n), clipped to [0, 1]. NaN when the detector is no
-- better than chance (sensitivity + specificity <= 1).
CREATE FUNCTION IF NOT EXISTS safemon_rogan_gladen AS (k, n, se_k, se_n, sp_k, sp_n) ->
    if(se_k / se_n + sp_k / sp_n <= 1, nan, greatest(0, least(1, (k / n + sp_k / sp_n - 1) / (se_k / se_n + sp_k / sp_n - 1))));

-- Its standard error by the delta method, carrying the uncertainty of all three rates, each
-- with the Agresti-Coull adjustment (two successes and two failures added) so that zero
-- counts still give a width. A simulation with known rates checks the interval's coverage.
CREATE FUNCTION IF NOT EXISTS safemon_rogan_gladen_se AS (k, n, se_k, se_n, sp_k, sp_n) ->
    sqrt(
        ((k + 2) / (n + 4)) * (1 - (k + 2) / (n + 4)) / (n + 4)
        + pow(safemon_rogan_gladen(k, n, se_k, se_n, sp_k, sp_n), 2) * ((se_k + 2) / (se_n + 4)) * (1 - (se_k + 2) / (se_n + 4)) / (se_n + 4)
        + pow(1 - safemon_rogan_gladen(k, n, se_k, se_n, sp_k, sp_n), 2) * ((sp_k + 2) / (sp_n + 4)) * (1 - (sp_k + 2) / (sp_n + 4)) / (sp_n + 4)
    ) / (se_k / se_n + sp_k / sp_n - 1);

-- (corrected rate, low, high) with a 95% interval, clipped to [0, 1].
CREATE FUNCTION IF NOT EXISTS safemon_corrected_rate AS (k, n, se_k, se_n, sp_k, sp_n) ->
    (
        safemon_rogan_gladen(k, n, se_k, se_n, sp_k, sp_n),
        greatest(0, safemon_rogan_gladen(k, n, se_k, se_n, sp_k, sp_n) - 1.959964 * safemon_rogan_gladen_se(k, n, se_k, se_n, sp_k, sp_n)),
        least(1, safemon_rogan_gladen(k, n, se_k, se_n, sp_k, sp_n) + 1.959964 * safemon_rogan_gladen_se(k, n, se_k, se_n, sp_k, sp_n))
    );
