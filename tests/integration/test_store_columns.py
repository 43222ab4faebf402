"""The stored rows and the migrated tables agree: each scored row is defined once in code
(`Detection` plus its path's own columns), and the migrations create exactly those columns."""

from __future__ import annotations

import pytest

from pipeline.detectors import DETECTION_COLUMNS
from pipeline.store.probes import RESULT_COLUMNS
from pipeline.store.samples import SCORE_COLUMNS

WRITTEN_BESIDE = {"probe_results": {"target", "suite", "model_version", "run_started_at", "scored_at"}, "sample_scores": set()}


@pytest.mark.parametrize(("table", "columns"), [("probe_results", RESULT_COLUMNS), ("sample_scores", SCORE_COLUMNS)])
def test_migrated_table_has_exactly_the_written_columns(client, table, columns):
    stored = [
        r[0]
        for r in client.query("SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String}", parameters={"t": table}).result_rows
    ]
    assert set(stored) == set(columns) | WRITTEN_BESIDE[table]
    assert set(DETECTION_COLUMNS) <= set(stored), "both scored tables carry the whole detection contract"
