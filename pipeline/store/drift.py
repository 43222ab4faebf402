"""Drift results in ClickHouse, and the embedding windows the drift checks read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from clickhouse_connect.driver.client import Client

from pipeline.store.sql import quoted

RESULT_COLUMNS = (
    "target",
    "model_version",
    "method",
    "window_start",
    "window_end",
    "reference_kind",
    "reference_label",
    "status",
    "n_reference",
    "n_current",
    "n_invalid",
    "statistic",
    "p_value",
    "p_adjusted",
    "effect_size",
    "drifted",
    "alerted",
    "explanation",
    "error",
    "checked_at",
)


@dataclass(frozen=True)
class EmbeddingWindow:
    """The samples of one window: ids, embeddings (rows, ragged until checked) and flagged categories."""

    sample_ids: list[str]
    embeddings: list[list[float]]
    categories: list[list[str]]
    model_versions: list[str]

    def __len__(self) -> int:
        return len(self.sample_ids)


def write_results(client: Client, rows: Sequence[dict[str, Any]]) -> None:
    """Insert drift results (dicts keyed by RESULT_COLUMNS)."""
    if rows:
        client.insert("drift_results", [[r[c] for c in RESULT_COLUMNS] for r in rows], column_names=list(RESULT_COLUMNS))


def read_window(
    client: Client,
    target: str,
    periods: Sequence[tuple[datetime, datetime]],
    *,
    model_version: str | None = None,
    limit: int = 2000,
) -> EmbeddingWindow:
    """At most `limit` samples of `target` in the [start, end) periods, a deterministic hash subsample.

    Rows come in hash order, so any prefix of the window is itself a uniform subsample of it.
    """
    if not periods:
        raise ValueError("a window needs at least one (start, end) period")
    params: dict[str, Any] = {"target": target, "limit": limit}
    spans = []
    for i, (start, end) in enumerate(periods):
        spans.append(f"(occurred_at >= {{s{i}:DateTime64(3, 'UTC')}} AND occurred_at < {{e{i}:DateTime64(3, 'UTC')}})")
        params[f"s{i}"], params[f"e{i}"] = start, end
    where = f"target = {{target:String}} AND ({' OR '.join(spans)})"
    if model_version is not None:
        where += " AND model_version = {mv:String}"
        params["mv"] = model_version
    rows = client.query(
        f"SELECT sample_id, embedding, flagged_categories, model_version FROM sample_scores FINAL WHERE {where} "
        "ORDER BY cityHash64(sample_id) LIMIT {limit:UInt32}",
        parameters=params,
    ).result_rows
    return EmbeddingWindow([r[0] for r in rows], [list(r[1]) for r in rows], [list(r[2]) for r in rows], [r[3] for r in rows])


def current_keys(client: Client, start: datetime, end: datetime) -> list[tuple[str, str]]:
    """(target, model_version) pairs that sent samples in [start, end)."""
    rows = client.query(
        "SELECT DISTINCT target, model_version FROM sample_scores "
        "WHERE occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')} ORDER BY target, model_version",
        parameters={"start": start, "end": end},
    ).result_rows
    return [(str(t), str(m)) for t, m in rows]


def as_matrix(window: EmbeddingWindow) -> tuple[np.ndarray, np.ndarray]:
    """The window's embeddings as one float32 matrix and the mask of rows kept.

    Rows whose length differs from the most common one cannot be stacked: they are reported
    by the caller as a dimension mismatch rather than silently dropped.
    """
    if not window.embeddings:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=bool)
    lengths = np.array([len(e) for e in window.embeddings])
    dims, counts = np.unique(lengths, return_counts=True)
    if len(dims) > 1:
        raise ValueError(f"embeddings of different dimensions in one window: {dict(zip(dims.tolist(), counts.tolist(), strict=True))}")
    return np.asarray(window.embeddings, dtype=np.float32), np.ones(len(lengths), dtype=bool)


def reproduce_sql(database: str, target: str) -> str:
    """SQL a person pastes into `safemon sql` to see a target's recent drift results."""
    return (
        f"SELECT window_end, method, status, n_current, statistic, p_adjusted, effect_size, drifted FROM "
        f"{database}.drift_results FINAL WHERE target = {quoted(target)} ORDER BY window_end DESC, method LIMIT 48"
    )
