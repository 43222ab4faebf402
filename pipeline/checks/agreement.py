"""The agreement check: does the judge still agree with the heads as often as it did?

A random share of the heads' confident verdicts also goes to the judge (`judge_audit_share`):
the audit. Per target, each category's disagreement rate over the last
`judge_agreement_window_hours` is compared with the `judge_agreement_baseline_days` before it,
decided as a regression is (`pipeline.stats.regression.compare`: one-sided exact test, correction
across the target's categories, a minimum rise of `judge_agreement_min_effect`), on the audits
of one judge version. Probes and production samples are compared apart (a category is named
with its source): agreement on adversarial probes and on real traffic need not be alike, and a
pooled rate would move with their mix. Disagreement that rose means the heads, or what they
score, moved away from the judge: the detector drifted, a DRIFT finding of source JUDGE.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

import structlog
from clickhouse_connect.driver.client import Client

from pipeline.checks.alerts import raise_alert
from pipeline.checks.findings import CheckStatus, Finding
from pipeline.checks.stream import WindowCheck
from pipeline.records import AlertKind, Sample, Source
from pipeline.settings import Settings
from pipeline.stats.proportions import category_stat
from pipeline.stats.regression import compare
from pipeline.store import agreement as agreement_store

log = structlog.get_logger()


def label(source: str, category: str) -> str:
    """How a finding names a category of one source, e.g. `cybercrime (stream)`."""
    return f"{category} ({source})"


def check_target(client: Client, settings: Settings, target: str, end: datetime, *, link: str | None = None) -> WindowCheck:
    """Compare one target's disagreement in the current window with its baseline and decide on an alert;
    each comparison's rate is the disagreement rate, and a regressed one is a category whose agreement fell."""
    start = end - timedelta(hours=settings.judge_agreement_window_hours)
    base_start = start - timedelta(days=settings.judge_agreement_baseline_days)
    # The baseline is counted on the audits the current window's judge version gave: agreement
    # with another judge (a new guard model, another rubric) is not comparable.
    current = agreement_store.window_audits(client, target, start, end)
    baseline = agreement_store.window_audits(client, target, base_start, start, judge_version=current.judge_version)
    # Categories with too few audits on either side are left out, and so out of the correction.
    least = settings.judge_agreement_min_audited
    tested = [key for key, (_, n) in current.groups.items() if n >= least and baseline.groups.get(key, (0, 0))[1] >= least]
    if not tested:
        log.info("judge.agreement_insufficient", target_name=target, n_current=current.audited, n_baseline=baseline.audited, least=least)
        return WindowCheck(target, current.audited, baseline.audited, (), None, CheckStatus.INSUFFICIENT_DATA)
    comparisons = compare(
        [category_stat(label(*key), *baseline.groups[key]) for key in tested],
        [category_stat(label(*key), *current.groups[key]) for key in tested],
        alpha=settings.alert_alpha,
        min_effect=settings.judge_agreement_min_effect,
        correction=settings.alert_correction,
    )
    fell = [key for key, c in zip(tested, comparisons, strict=True) if c.regressed]
    by_source: dict[str, list[str]] = defaultdict(list)
    for source, category in fell:
        by_source[source].append(category)
    samples = agreement_store.disagreements(client, target, start, end, by_source) if fell else []
    finding = Finding(
        source=Source.JUDGE,
        kind=AlertKind.DRIFT,
        target=target,
        suite="",
        model_version=current.model_version,
        run_id=f"audits {start:%Y-%m-%dT%H:%MZ}..{end:%Y-%m-%dT%H:%MZ}",
        baseline_model_version=baseline.model_version,
        baseline_run_id=f"audits {base_start:%Y-%m-%dT%H:%MZ}..{start:%Y-%m-%dT%H:%MZ}",
        flagged=tuple(c.category for c in comparisons if c.regressed),
        comparisons=tuple(comparisons),
        summary=f"Judge {current.judge_version or '(unversioned)'}: {current.audited} audits in the window, {baseline.audited} in the baseline.",
        samples=tuple(Sample(sample_id, label(source, category), prompt, response) for source, sample_id, category, prompt, response in samples),
        sql=agreement_store.reproduce_sql(settings.clickhouse_database, target, base_start),
    )
    alert = raise_alert(client, finding, settings, now=end, link=link)
    log.info("judge.agreement_checked", target_name=target, n_current=current.audited, fell=list(finding.flagged))
    return WindowCheck(target, current.audited, baseline.audited, tuple(comparisons), alert, CheckStatus.CHECKED)


def check_all(client: Client, settings: Settings, end: datetime, *, link: str | None = None) -> list[WindowCheck]:
    """Check every target with audits in the current window."""
    start = end - timedelta(hours=settings.judge_agreement_window_hours)
    return [check_target(client, settings, t, end, link=link) for t in agreement_store.targets_in(client, start, end)]
