"""Consumer lag in ClickHouse: what the stream workers saw per partition, and a group's total over time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from clickhouse_connect.driver.client import Client

from pipeline.store.sql import quoted

LAG_COLUMNS = ("observed_at", "consumer_group", "topic", "partition", "end_offset", "position", "lag", "worker")


@dataclass(frozen=True)
class LagObservation:
    """One partition's end offset and the group's position on it, as one worker saw them."""

    observed_at: datetime
    consumer_group: str
    topic: str
    partition: int
    end_offset: int
    position: int
    worker: str

    @property
    def lag(self) -> int:
        return max(0, self.end_offset - self.position)


@dataclass(frozen=True)
class LagPoint:
    """A group's lag over all its partitions at the end of one bucket, with the offsets it comes from."""

    at: datetime
    lag: int
    end_offset: int  # its rise between points is the input rate
    position: int  # and this one's the group's rate
    partitions: int


def write_lag(client: Client, observations: Sequence[LagObservation]) -> None:
    if observations:
        rows = [[o.observed_at, o.consumer_group, o.topic, o.partition, o.end_offset, o.position, o.lag, o.worker] for o in observations]
        client.insert("stream_lag", rows, column_names=list(LAG_COLUMNS))


# Each partition's last observation in the bucket, summed over the partitions: workers write
# their own partitions at different moments, so the bucket must span at least two writes.
SERIES_SQL = """
SELECT bucket, sum(lag), sum(end_offset), sum(position), count()
FROM
(
    SELECT toStartOfInterval(observed_at, toIntervalSecond({bucket_s:UInt32})) AS bucket, topic, partition,
           argMax(lag, observed_at) AS lag, argMax(end_offset, observed_at) AS end_offset, argMax(position, observed_at) AS position
    FROM stream_lag
    WHERE consumer_group = {group:String} AND observed_at >= {start:DateTime64(3)} AND observed_at < {end:DateTime64(3)}
    GROUP BY bucket, topic, partition
)
GROUP BY bucket
ORDER BY bucket
"""


def lag_series(client: Client, group: str, start: datetime, end: datetime, bucket_s: int) -> list[LagPoint]:
    """The group's total lag per bucket of `bucket_s` seconds in [start, end)."""
    result = client.query(SERIES_SQL, parameters={"group": group, "start": start, "end": end, "bucket_s": bucket_s})
    return [LagPoint(at, int(lag), int(e), int(p), int(n)) for at, lag, e, p, n in result.result_rows]


def groups_in(client: Client, start: datetime, end: datetime) -> list[str]:
    """Consumer groups that stored lag in [start, end)."""
    result = client.query(
        "SELECT DISTINCT consumer_group FROM stream_lag WHERE observed_at >= {start:DateTime64(3)} AND observed_at < {end:DateTime64(3)} ORDER BY consumer_group",
        parameters={"start": start, "end": end},
    )
    return [row[0] for row in result.result_rows]


def reproduce_sql(database: str, group: str, start: datetime) -> str:
    """What a person pastes into `safemon sql` to see the lag an alert was decided on."""
    return (
        f"SELECT toStartOfMinute(observed_at) AS minute, topic, partition, max(lag) AS lag FROM {database}.stream_lag\n"
        f"WHERE consumer_group = {quoted(group)} AND observed_at >= {quoted(f'{start:%Y-%m-%d %H:%M:%S}')} GROUP BY minute, topic, partition ORDER BY minute, partition"
    )
