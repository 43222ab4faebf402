"""Stored consumer lag and the check that alerts when it keeps growing, on the real engine."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from pipeline.checks.findings import CheckStatus
from pipeline.checks.lag import check_all, check_group
from pipeline.records import AlertKind
from pipeline.store.lag import LagObservation, lag_series, write_lag

END = datetime.now(UTC).replace(second=0, microsecond=0)  # inside the table's TTL
GROUP = "safemon-stream"


def _observe(client, lags_per_partition: list[tuple[int, int]], *, every_s: int = 30, minutes: int = 30, group: str = GROUP) -> None:
    """Two partitions, each observed every `every_s` by its own worker, over the last `minutes`;
    lag grows by `step` per minute from `start` on each; the input runs at 40/s on each."""
    rows = []
    for partition, (start, step) in enumerate(lags_per_partition):
        for k in range(minutes * 60 // every_s):
            at = END - timedelta(minutes=minutes) + timedelta(seconds=k * every_s + 7 * partition)
            end = 1_000_000 + 40 * k * every_s
            lag = start + step * k * every_s // 60
            rows.append(LagObservation(at, group, "conversations", partition, end, end - lag, f"worker-{partition}"))
    write_lag(client, rows)


def test_a_lag_that_keeps_growing_raises_one_data_quality_alert(client, settings) -> None:
    _observe(client, [(100, 120), (50, 80)])
    check = check_group(client, settings, GROUP, END)
    assert check.status == CheckStatus.CHECKED and check.growing and check.p_value < 1e-6
    assert check.last > check.first >= 150
    assert check.alert is not None and check.alert.alert.kind == AlertKind.DATA_QUALITY
    assert "Stream falling behind" in check.alert.alert.title and GROUP in check.alert.alert.title
    assert "input 80.0/s, consumed 76.7/s" in check.alert.alert.summary and "stream_lag" in check.alert.alert.sql
    # The next hour's check of a lag still growing does not page again within the cooldown.
    later = check_group(client, settings, GROUP, END + timedelta(minutes=1))
    assert later.growing and later.alert is not None and later.alert.status == "suppressed"


def test_a_steady_lag_or_a_small_one_does_not_alert(client, settings) -> None:
    _observe(client, [(3_000, 0), (2_000, 0)], group="steady")
    _observe(client, [(10, 2), (5, 1)], group="small")  # grows, but stays far under the minimum
    checks = {c.group: c for c in check_all(client, settings, END)}
    assert set(checks) == {"steady", "small"}
    assert not checks["steady"].growing and checks["steady"].alert is None
    assert checks["small"].p_value < 0.01 and not checks["small"].growing and checks["small"].alert is None


def test_a_window_mostly_without_lag_figures_is_insufficient(client, settings) -> None:
    _observe(client, [(100, 500), (100, 500)], minutes=8)  # the last 8 of 30 minutes
    check = check_group(client, settings, GROUP, END)
    assert check.status == CheckStatus.INSUFFICIENT_DATA and check.alert is None


def test_the_series_takes_each_partitions_last_figure_per_bucket_and_a_stored_again_observation_once(client) -> None:
    at = END - timedelta(minutes=2)
    first = LagObservation(at, GROUP, "t", 0, 100, 40, "w")
    write_lag(client, [first, LagObservation(at + timedelta(seconds=20), GROUP, "t", 1, 50, 45, "w")])
    write_lag(client, [first])  # a store retry
    write_lag(client, [replace(first, observed_at=at + timedelta(seconds=40), position=90)])
    points = lag_series(client, GROUP, END - timedelta(minutes=5), END, 60)
    assert [(p.lag, p.end_offset, p.position, p.partitions) for p in points] == [(15, 150, 135, 2)]
    assert client.command("SELECT count() FROM stream_lag FINAL") == 3
