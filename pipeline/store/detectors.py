"""How often each detector version errs (its card's confusion counts), for rates corrected for detector error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.records import utc_now

ERROR_COLUMNS = ("detector_version", "task", "tp", "fn", "tn", "fp", "measured_on", "recorded_at")


def write_errors(client: Client, detector_version: str, errors: Mapping[str, Mapping[str, Any]]) -> None:
    """Record the card's counts per task for `detector_version` (a ReplacingMergeTree: repeating it is harmless)."""
    if not errors:
        return
    now = utc_now()
    rows = [[detector_version, task, e["tp"], e["fn"], e["tn"], e["fp"], e["measured_on"], now] for task, e in sorted(errors.items())]
    client.insert("detector_errors", rows, column_names=list(ERROR_COLUMNS))
