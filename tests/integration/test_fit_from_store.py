"""`safemon detectors fit --from-store --labels judge`: heads refitted on the judge's stored
verdicts, the newest days held out; too few labels is a clear error. `safemon eval detectors
--from-store` scores the heads in use against the same labels."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.detectors.head import HeadSet
from pipeline.records import utc_now
from pipeline.settings import get_settings

runner = CliRunner()
ROWS = 360
DAYS = 10


@pytest.fixture
def env(settings, client, monkeypatch):
    monkeypatch.setenv("SAFEMON_CLICKHOUSE_DSN", settings.clickhouse_dsn)
    monkeypatch.setenv("SAFEMON_CLICKHOUSE_DATABASE", settings.clickhouse_database)
    get_settings.cache_clear()
    yield client
    get_settings.cache_clear()


def _store_judge_labels(client, datasets, n: int) -> None:
    """JailbreakBench answers as judged probe results, Llama Guard 1's recorded verdict as the
    judge's, spread over DAYS days (one run a day)."""
    lines = (datasets / "jailbreakbench/jbb_artifacts_flat.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["prompt"] and r["response"] and r["jailbroken_llama_guard1"] is not None]
    picked = [records[i] for i in np.random.default_rng(0).choice(len(records), n, replace=False)]
    now = utc_now()
    columns = ["run_id", "probe_id", "category", "expect", "prompt", "response", "verdict", "target", "suite", "model_version", "run_started_at",
               "scored_at", "head_verdict", "judge_role", "judge_verdict", "judge_model", "judge_version", "decided_by"]  # fmt: skip
    rows = []
    for i, r in enumerate(picked):
        day = i % DAYS
        unsafe = bool(r["jailbroken_llama_guard1"])
        rows.append(
            [
                f"run-{day}",
                f"p{i}",
                "cybercrime",
                "refuse",
                r["prompt"],
                r["response"],
                "attack_success" if unsafe else "refused",
                "bot",
                "core",
                "v1",
                now - timedelta(days=DAYS - day),
                now,
                "refused",
                "uncertain",
                "unsafe" if unsafe else "safe",
                "llama-guard-1",
                "llama-guard-1+llama_guard.v1",
                "judge",
            ]  # fmt: skip
        )
    client.insert("probe_results", rows, column_names=columns)


def test_too_few_judge_labels_is_a_clear_error(env, datasets, tmp_path) -> None:
    _store_judge_labels(env, datasets, 30)
    result = runner.invoke(app, ["detectors", "fit", "--from-store", "--labels", "judge", "--since", "30d", "--out", str(tmp_path / "h.npz")])
    assert result.exit_code == 2
    assert "only 30 judge labels" in result.output and "--min-labels" in result.output
    assert not (tmp_path / "h.npz").exists()


def test_heads_refit_on_judge_labels_hold_out_the_newest_days(env, datasets, tmp_path) -> None:
    _store_judge_labels(env, datasets, ROWS)
    out = tmp_path / "judge-heads.npz"
    result = runner.invoke(
        app,
        ["detectors", "fit", "--from-store", "--labels", "judge", "--since", "30d", "--holdout-days", "3", "--out", str(out)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    heads = HeadSet.load(out)
    provenance = heads.provenance
    assert provenance["labels"] == "judge" and provenance["judge_versions"] == ["llama-guard-1+llama_guard.v1"]
    assert len(provenance["held_out_days"]) == 3
    assert provenance["rows_held_out"] == 3 * ROWS // DAYS and provenance["rows_fitted"] == ROWS - 3 * ROWS // DAYS
    assert provenance["heads_fitted"]["harmful_compliance"] == {"probe_results": provenance["rows_fitted"]}
    # The other heads are the ones in use, kept as they were.
    assert {"refusal", "prompt_harm", "harmful_compliance"} <= set(heads.heads)
    assert "held-out days" in result.output and "heads in use" in result.output

    scored = runner.invoke(app, ["eval", "detectors", "--from-store", "--labels", "judge", "--detectors", str(out)], env={"COLUMNS": "200"})
    assert scored.exit_code == 0, scored.output
    assert f"{ROWS} judge labels" in scored.output and "harmful_compliance" in scored.output
