"""The lag check: has a consumer group's lag kept growing over the last `stream_lag_alert_minutes`?

The workers store each partition's lag (`stream_lag`); the check sums it per bucket and asks
whether it rose over the window with a one-sided Kendall rank-correlation test of lag against
time (the Mann-Kendall trend test), at `alert_alpha`. Lag is autocorrelated, which makes the
test too ready to see a trend; so the alert also needs the lag at the end above the window's
start and at least `stream_lag_alert_min_records`. Falling behind is a data-quality alert:
verdicts are not wrong, they are late.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from clickhouse_connect.driver.client import Client
from scipy.stats import kendalltau

from pipeline.checks.alerts import raise_alert
from pipeline.checks.findings import CheckStatus, Finding
from pipeline.records import AlertKind, Source
from pipeline.settings import Settings
from pipeline.store import lag as lag_store
from pipeline.store.alerts import StoredAlert

log = structlog.get_logger()

SUITE = "consumer_lag"  # keeps the lag chain apart from other stream conditions


@dataclass(frozen=True)
class LagCheck:
    """The outcome of one consumer group's lag check."""

    group: str
    points: int
    first: int
    last: int
    tau: float
    p_value: float
    growing: bool
    alert: StoredAlert | None
    status: CheckStatus


def bucket_seconds(settings: Settings) -> int:
    """A bucket spans at least two lag writes of every worker, and a minute."""
    return max(60, math.ceil(2 * settings.stream_lag_store_interval_s))


def check_group(client: Client, settings: Settings, group: str, end: datetime, *, link: str | None = None) -> LagCheck:
    """Test one group's lag over the window for an upward trend and decide on an alert."""
    start = end - timedelta(minutes=settings.stream_lag_alert_minutes)
    bucket = bucket_seconds(settings)
    series = lag_store.lag_series(client, group, start, end, bucket)
    # Most of the window must be covered: a trend over its last minutes is not "kept growing".
    needed = max(5, int(0.8 * settings.stream_lag_alert_minutes * 60 / bucket))
    if len(series) < needed:
        log.info("stream.lag_insufficient", group=group, points=len(series), needed=needed)
        return LagCheck(group, len(series), 0, 0, math.nan, math.nan, False, None, CheckStatus.INSUFFICIENT_DATA)
    lags = [p.lag for p in series]
    tau, p_value = kendalltau(range(len(lags)), lags, alternative="greater")
    tau, p_value = float(tau), float(p_value)  # nan when the lag never changed
    growing = p_value < settings.alert_alpha and lags[-1] > lags[0] and lags[-1] >= settings.stream_lag_alert_min_records
    elapsed = max((series[-1].at - series[0].at).total_seconds(), 1.0)
    summary = (
        f"Consumer group {group} went from {lags[0]:,} to {lags[-1]:,} records behind over {elapsed / 60:.0f} min "
        f"(Kendall tau {tau:.2f}, one-sided p={p_value:.2g}, {len(series)} points); "
        f"input {(series[-1].end_offset - series[0].end_offset) / elapsed:.1f}/s, consumed {(series[-1].position - series[0].position) / elapsed:.1f}/s."
    )
    finding = Finding(
        source=Source.STREAM,
        kind=AlertKind.DATA_QUALITY,
        target=group,
        suite=SUITE,
        model_version="",
        run_id=f"lag {start:%Y-%m-%dT%H:%MZ}..{end:%H:%MZ}",
        problems=(summary,) if growing else (),
        summary=summary,
        sql=lag_store.reproduce_sql(settings.clickhouse_database, group, start),
    )
    alert = raise_alert(client, finding, settings, now=end, link=link)
    log.info("stream.lag_checked", group=group, first=lags[0], last=lags[-1], tau=round(tau, 3), p_value=p_value, growing=growing)
    return LagCheck(group, len(series), lags[0], lags[-1], tau, p_value, growing, alert, CheckStatus.CHECKED)


def check_all(client: Client, settings: Settings, end: datetime, *, link: str | None = None) -> list[LagCheck]:
    """Check every consumer group that stored lag in the window."""
    start = end - timedelta(minutes=settings.stream_lag_alert_minutes)
    return [check_group(client, settings, g, end, link=link) for g in lag_store.groups_in(client, start, end)]
