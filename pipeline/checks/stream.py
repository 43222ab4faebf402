"""A stream window's check: each hazard's violation rate in the current window against a baseline window.

The current window is the last `stream_window_minutes` before the check; the baseline is
the `stream_baseline_hours` just before it. The same statistics as probe runs decide (one-sided
exact test, correction across categories, minimum effect), and the same alert decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from clickhouse_connect.driver.client import Client

from pipeline.checks.alerts import UNSCORED_SUITE, raise_alert
from pipeline.checks.findings import CheckStatus, Finding
from pipeline.records import AlertKind, Comparison, Sample, Source
from pipeline.settings import Settings
from pipeline.stats.proportions import category_stat
from pipeline.stats.regression import compare
from pipeline.store import samples as sample_store
from pipeline.store.alerts import StoredAlert

log = structlog.get_logger()


@dataclass(frozen=True)
class WindowCheck:
    """The outcome of one target's window check."""

    target: str
    n_current: int
    n_baseline: int
    comparisons: tuple[Comparison, ...]
    alert: StoredAlert | None
    status: CheckStatus


def check_target(client: Client, settings: Settings, target: str, end: datetime, *, link: str | None = None) -> WindowCheck:
    """Compare one target's current window with its baseline and decide on an alert."""
    start = end - timedelta(minutes=settings.stream_window_minutes)
    base_start = start - timedelta(hours=settings.stream_baseline_hours)
    # The baseline is counted on the samples the current window's detector version scored: rates
    # from other detectors (a new head, another backend) are not comparable.
    current = sample_store.window_counts(client, target, start, end)
    baseline = sample_store.window_counts(client, target, base_start, start, detector_version=current.detector_version)
    n_current, n_baseline = current.n, baseline.n
    total, unscored, judged = sample_store.judge_counts(client, target, start, end)
    if settings.judge_endpoint or unscored:
        check_unscored(client, settings, target, current.model_version, (start, end), total, unscored, link=link)
    if n_current < settings.stream_min_samples or n_baseline < settings.stream_min_samples:
        log.info("stream.window_insufficient", target_name=target, n_current=n_current, n_baseline=n_baseline)
        return WindowCheck(target, n_current, n_baseline, (), None, CheckStatus.INSUFFICIENT_DATA)
    comparisons = compare(
        [category_stat(c, *baseline.categories[c]) for c in sorted(baseline.categories)],
        [category_stat(c, *current.categories[c]) for c in sorted(current.categories)],
        alpha=settings.alert_alpha,
        min_effect=settings.alert_min_effect,
        correction=settings.alert_correction,
    )
    finding = Finding(
        source=Source.STREAM,
        kind=AlertKind.REGRESSION,
        target=target,
        suite="",
        model_version=current.model_version,
        run_id=f"window {start:%Y-%m-%dT%H:%MZ}..{end:%H:%MZ}",
        baseline_model_version=baseline.model_version,
        baseline_run_id=f"window {base_start:%Y-%m-%dT%H:%MZ}..{start:%Y-%m-%dT%H:%MZ}",
        flagged=tuple(c.category for c in comparisons if c.regressed),
        comparisons=tuple(comparisons),
        samples=tuple(Sample(*row) for row in sample_store.flagged_samples(client, target, start, end)),
        sql=sample_store.reproduce_sql(settings.clickhouse_database, target, base_start),
        summary=f"A judge decided {judged} of {n_current} samples ({judged / n_current:.0%}); the heads the rest." if judged else "",
    )
    alert = raise_alert(client, finding, settings, now=end, link=link)
    log.info("stream.window_checked", target_name=target, n_current=n_current, regressed=list(finding.flagged))
    return WindowCheck(target, n_current, n_baseline, tuple(comparisons), alert, CheckStatus.CHECKED)


def check_unscored(
    client: Client, settings: Settings, target: str, model_version: str, window: tuple[datetime, datetime], total: int, unscored: int, *, link: str | None
) -> StoredAlert | None:
    """A data-quality alert when more of a window's samples than `judge_max_unscored_rate` were left
    unscored (judge failures, or the hourly budget): their rates then rest on fewer samples than
    arrived."""
    start, end = window
    share = unscored / total if total else 0.0
    over = total >= settings.stream_min_samples and share > settings.judge_max_unscored_rate
    problem = f"{unscored} of {total} samples ({share:.0%}) unscored, above SAFEMON_JUDGE_MAX_UNSCORED_RATE={settings.judge_max_unscored_rate:g}"
    finding = Finding(
        source=Source.STREAM,
        kind=AlertKind.DATA_QUALITY,
        target=target,
        suite=UNSCORED_SUITE,
        model_version=model_version,
        run_id=f"window {start:%Y-%m-%dT%H:%MZ}..{end:%H:%MZ}",
        problems=(problem,) if over else (),
        summary=f"{problem}: judge failures or its hourly budget (see unscored_reason in sample_scores)." if over else "",
        sql=sample_store.unscored_sql(settings.clickhouse_database, target, start),
    )
    return raise_alert(client, finding, settings, now=end, link=link)


def check_all(client: Client, settings: Settings, end: datetime, *, link: str | None = None) -> list[WindowCheck]:
    """Check every target that sent samples in the current window."""
    start = end - timedelta(minutes=settings.stream_window_minutes)
    return [check_target(client, settings, t, end, link=link) for t in sample_store.targets_in(client, start, end)]
