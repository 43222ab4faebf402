"""Reads and writes of scored stream samples and rejected messages.

Writes are idempotent: each partition's slice of a batch is inserted with a deduplication
token naming its source offset range (and a digest of the rows, so a slice that differs
after a crash is never mistaken for the one already stored); the tables are
ReplacingMergeTrees, so any other re-insert collapses on read with FINAL.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.detectors.scorer import DETECTION_COLUMNS
from pipeline.records import JUDGEMENT_COLUMNS
from pipeline.store.sql import quoted

SCORE_COLUMNS = (
    "sample_id",
    "occurred_at",
    "target",
    "model_version",
    "conversation_id",
    "n_turns",
    "n_assistant_turns",
    "first_flagged_turn",
    "turn_attack_scores",
    "risk",
    "user_text",
    "assistant_text",
    *DETECTION_COLUMNS,
    *JUDGEMENT_COLUMNS,
    "pii_counts",
    "embedding",
    "metadata",
    "source_topic",
    "source_partition",
    "source_offset",
    "scored_at",
)
REJECTION_COLUMNS = (
    "source_topic",
    "source_partition",
    "source_offset",
    "code",
    "reason",
    "sample_id",
    "raw",
    "raw_bytes",
    "attempt",
    "rejected_at",
)
# IN-lists of sample ids are sent as one Array parameter; chunk to keep each query small.
_LOOKUP_CHUNK = 5_000


@dataclass(frozen=True)
class SourceRange:
    """Where a slice of a batch came from: one topic partition and its first/last offsets."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int


def dedup_token(table: str, source: SourceRange, keys: Iterable[str]) -> str:
    """The insert_deduplication_token of one partition slice: offsets plus a digest of its keys."""
    digest = hashlib.blake2b("\n".join(keys).encode(), digest_size=8).hexdigest()
    return f"{table}:{source.topic}:{source.partition}:{source.first_offset}-{source.last_offset}:{digest}"


def _by_partition(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["source_topic"], int(row["source_partition"]))].append(row)
    return groups


def _insert_slices(client: Client, table: str, columns: Sequence[str], rows: Sequence[dict[str, Any]], key: str) -> int:
    written = 0
    for (topic, partition), group in sorted(_by_partition(rows).items()):
        group.sort(key=lambda r: r["source_offset"])
        source = SourceRange(topic, partition, group[0]["source_offset"], group[-1]["source_offset"])
        client.insert(
            table,
            [[row[c] for c in columns] for row in group],
            column_names=list(columns),
            settings={"insert_deduplication_token": dedup_token(table, source, (str(r[key]) for r in group))},
        )
        written += len(group)
    return written


def write_scores(client: Client, rows: Sequence[dict[str, Any]]) -> int:
    """Insert scored samples (dicts keyed by SCORE_COLUMNS), one insert per source partition."""
    return _insert_slices(client, "sample_scores", SCORE_COLUMNS, rows, "sample_id")


def write_rejections(client: Client, rows: Sequence[dict[str, Any]]) -> int:
    """Insert rejected messages (dicts keyed by REJECTION_COLUMNS), one insert per source partition."""
    return _insert_slices(client, "rejected_samples", REJECTION_COLUMNS, rows, "source_offset")


def existing_sources(client: Client, sample_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """For each given sample_id already stored: the (partition, offset) it was stored from.

    The worker tells a redelivery (same offset: idempotent) from a second message reusing
    an id (different offset: duplicate_sample_id) with this.
    """
    ids = sorted(set(sample_ids))
    found: dict[str, tuple[int, int]] = {}
    for start in range(0, len(ids), _LOOKUP_CHUNK):
        result = client.query(
            "SELECT sample_id, min((source_partition, source_offset)) FROM sample_scores WHERE sample_id IN {ids:Array(String)} GROUP BY sample_id",
            parameters={"ids": ids[start : start + _LOOKUP_CHUNK]},
        )
        for sample_id, (partition, offset) in result.result_rows:
            found[sample_id] = (int(partition), int(offset))
    return found


def count_scores(client: Client) -> int:
    """Scored samples as FINAL sees them (each sample once)."""
    return int(client.query("SELECT count() FROM sample_scores FINAL").result_rows[0][0])


def count_rejections(client: Client, code: str | None = None) -> int:
    """Rejected messages as FINAL sees them, of one code or all."""
    if code is None:
        return int(client.query("SELECT count() FROM rejected_samples FINAL").result_rows[0][0])
    result = client.query("SELECT count() FROM rejected_samples FINAL WHERE code = {code:String}", parameters={"code": code})
    return int(result.result_rows[0][0])


_WINDOW = "target = {target:String} AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}"


@dataclass(frozen=True)
class WindowCounts:
    """A target's window: per hazard (flagged, scored), its most common model and detector versions, its size."""

    categories: dict[str, tuple[int, int]]
    model_version: str
    detector_version: str
    n: int


def window_counts(client: Client, target: str, start: datetime, end: datetime, detector_version: str | None = None) -> WindowCounts:
    """Counts of a target's window [start, end), of the samples one detector version scored when it is given."""
    # Unscored samples (the judge cascade gave no verdict) are in no rate's denominator.
    where = _WINDOW + " AND decided_by != 'unscored'" + (" AND detector_version = {version:String}" if detector_version is not None else "")
    params = {"target": target, "start": start, "end": end, "version": detector_version or ""}
    n, models, versions = client.query(
        f"SELECT count(), topK(1)(model_version), topK(1)(detector_version) FROM sample_scores FINAL WHERE {where}", parameters=params
    ).result_rows[0]
    rows = client.query(
        f"""
        SELECT category, countIf(has(flagged_categories, category)) AS k, count() AS n
        FROM sample_scores FINAL ARRAY JOIN mapKeys(violation_scores) AS category
        WHERE {where} GROUP BY category ORDER BY category
        """,
        parameters=params,
    ).result_rows
    return WindowCounts({c: (int(k), int(n)) for c, k, n in rows}, models[0] if models else "", versions[0] if versions else "", int(n))


def judge_counts(client: Client, target: str, start: datetime, end: datetime) -> tuple[int, int, int]:
    """(samples, unscored, decided by a judge) of a target's window [start, end)."""
    row = client.query(
        f"SELECT count(), countIf(decided_by = 'unscored'), countIf(decided_by = 'judge') FROM sample_scores FINAL WHERE {_WINDOW}",
        parameters={"target": target, "start": start, "end": end},
    ).result_rows[0]
    return int(row[0]), int(row[1]), int(row[2])


def flagged_samples(client: Client, target: str, start: datetime, end: datetime, limit: int = 50) -> list[tuple[str, str, str, str]]:
    """(sample_id, category, user_text, assistant_text) of a window's flagged samples, highest violation first."""
    return client.query(
        f"""
        SELECT sample_id, category, user_text, assistant_text
        FROM sample_scores FINAL ARRAY JOIN flagged_categories AS category
        WHERE {_WINDOW} ORDER BY violation_score DESC LIMIT {{limit:UInt32}}
        """,
        parameters={"target": target, "start": start, "end": end, "limit": limit},
    ).result_rows


def user_texts(client: Client, sample_ids: Sequence[str]) -> dict[str, str]:
    """The stored (redacted) user text of each sample id found: the user turn of the exchange its row
    reports (its first flagged assistant turn's, else its last one's), whose embedding drift reads."""
    if not sample_ids:
        return {}
    rows = client.query("SELECT sample_id, user_text FROM sample_scores FINAL WHERE sample_id IN {ids:Array(String)}", parameters={"ids": list(sample_ids)})
    return dict(rows.result_rows)


def targets_in(client: Client, start: datetime, end: datetime) -> list[str]:
    """Targets that sent samples in [start, end)."""
    rows = client.query(
        "SELECT DISTINCT target FROM sample_scores WHERE occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')} ORDER BY target",
        parameters={"start": start, "end": end},
    ).result_rows
    return [str(t) for (t,) in rows]


def hourly_rates(client: Client, target: str, categories: Sequence[str], start: datetime, end: datetime) -> list[tuple[datetime, str, int, int, str]]:
    """(hour, category, flagged, samples, model_version) of a target's violation rates per hour in [start, end]."""
    return client.query(
        """
        SELECT hour, category, sum(violations) AS flagged, sum(n) AS samples, argMax(model_version, n) AS version
        FROM violation_rate_by_hour
        WHERE target = {target:String} AND category IN {categories:Array(String)}
          AND hour >= {start:DateTime64(3, 'UTC')} AND hour <= {end:DateTime64(3, 'UTC')}
        GROUP BY hour, category ORDER BY hour
        """,
        parameters={"target": target, "categories": list(categories), "start": start, "end": end},
    ).result_rows


def reproduce_sql(database: str, target: str, since: datetime) -> str:
    """SQL a person pastes into `safemon sql` to see a target's hourly violation rates behind a stream alert."""
    return (
        f"SELECT hour, category, n, violations, round(rate, 3) AS rate FROM {database}.violation_rate_by_hour\n"
        f"WHERE target = {quoted(target)} AND hour >= {quoted(f'{since:%Y-%m-%d %H:%M:%S}')} ORDER BY category, hour"
    )


def unscored_sql(database: str, target: str, since: datetime) -> str:
    """SQL a person pastes into `safemon sql` to see why a target's samples were left unscored."""
    return (
        f"SELECT toStartOfHour(occurred_at) AS hour, unscored_reason, count() AS n FROM {database}.sample_scores FINAL\n"
        f"WHERE target = {quoted(target)} AND decided_by = 'unscored' AND occurred_at >= {quoted(f'{since:%Y-%m-%d %H:%M:%S}')}\n"
        "GROUP BY hour, unscored_reason ORDER BY hour, n DESC"
    )
