"""The shipped default heads, the calibration overlay and the `calibrate` commands.

Every text here is written for these tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.detectors import Scorer
from pipeline.detectors.head import HeadError, HeadSet
from pipeline.detectors.shipped import DETECTOR_FILE, DRIFT_FILE, load_drift_head, load_head, shipped_path, write_calibration
from pipeline.drift.attacks import AttackHead
from pipeline.lab.calibration import calibrate
from pipeline.lab.defaults import SOURCES
from pipeline.settings import load_settings

SHIPPED = HeadSet.load(shipped_path(DETECTOR_FILE))


def test_a_fresh_install_scores_with_the_shipped_heads(embedder) -> None:
    settings = load_settings()
    scorer = Scorer.from_settings(settings)
    assert scorer.version == f"head-{SHIPPED.digest}+{settings.embedding_backend}"
    assert set(SHIPPED.heads) == {"refusal", "harmful_compliance", "prompt_harm"}
    assert load_drift_head(settings) is not None
    fallback = load_settings(detector_defaults="exemplars")
    assert Scorer.from_settings(fallback).version.startswith("exemplars-") and load_drift_head(fallback) is None


def test_the_shipped_heads_learned_only_from_sources_that_allow_it() -> None:
    for head_sources in (SHIPPED.provenance["sources"], AttackHead.load(shipped_path(DRIFT_FILE)).sources["sources"]):
        names = {s["name"] for s in head_sources}
        assert names <= {n for n, s in SOURCES.items() if s.trains}
        assert not names & {"xstest_completions", "benign_instructions"}
        for source in head_sources:
            assert source["licence"] and source["rows"] >= 0
            assert len(source["sha256"]) == 64
    fitted = {src for by_source in SHIPPED.provenance["heads_fitted"].values() for src in by_source}
    assert fitted <= {s["name"] for s in SHIPPED.provenance["sources"]}


def test_the_overlay_sets_thresholds_only_for_the_head_it_was_calibrated_on(tmp_path, embedder) -> None:
    overlay = tmp_path / "calibration.json"
    write_calibration(overlay, "detectors", {"head": SHIPPED.digest, "thresholds": {"harmful_compliance": 0.83}})
    tuned = load_head(load_settings(calibration=overlay), embedder)
    assert tuned.get("harmful_compliance").threshold == 0.83 and tuned.get("refusal").threshold == SHIPPED.get("refusal").threshold
    assert tuned.digest != SHIPPED.digest  # the version stored with every result changes with the thresholds
    flags = Scorer(embedder, head=tuned).detectors["refusal_policy"].stack.policy.threshold
    assert flags == 0.83
    write_calibration(overlay, "detectors", {"head": "0123456789ab", "thresholds": {"harmful_compliance": 0.83}})
    with pytest.raises(HeadError, match="calibrated for head 0123456789ab"):
        load_head(load_settings(calibration=overlay), embedder)


def test_calibration_reaches_the_target_rate_on_synthetic_scores() -> None:
    rng = np.random.default_rng(3)
    for target in (0.01, 0.05):
        hits = 0
        for trial in range(40):
            scores = rng.beta(2, 5, size=4000)
            result = calibrate(scores, target, seed=trial)
            fresh = rng.beta(2, 5, size=200_000)
            true_rate = float((fresh >= result.threshold).mean())
            hits += result.ci[0] <= true_rate <= result.ci[1]
            assert abs(true_rate - target) < 4 * np.sqrt(target / 2000)
        assert hits >= 34  # the 95% interval covers the true rate in most trials


def test_calibration_refuses_too_few_rows() -> None:
    with pytest.raises(ValueError, match="needs at least 100 rows in each part"):
        calibrate(np.linspace(0, 1, 150), 0.01)


def _benign_file(path, n: int = 120) -> None:
    topics = ["bread", "a bike chain", "tomatoes", "a resume", "fractions", "a birthday card", "a tent", "sourdough", "the tides", "a spreadsheet"]
    rows = [
        {
            "user_text": f"How do I deal with {topics[i % 10]}? ({i})",
            "assistant_text": f"Here is a short guide to {topics[i % 10]}: start small and check step {i % 7}.",
        }
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))


def test_the_calibrate_commands_write_one_overlay_and_report_the_held_out_rate(tmp_path, monkeypatch, embedder) -> None:
    from pipeline.cli import app
    from pipeline.settings import get_settings

    traffic, overlay = tmp_path / "week.jsonl", tmp_path / "calibration.json"
    _benign_file(traffic)
    monkeypatch.setenv("SAFEMON_EMBEDDING_BACKEND", "torch")
    get_settings.cache_clear()
    runner = CliRunner()
    first = runner.invoke(app, ["detectors", "calibrate", "--benign", str(traffic), "--target-fpr", "0.05", "--out", str(overlay)])
    assert first.exit_code == 0, first.output
    assert "held-out rows flagged" in first.output
    second = runner.invoke(app, ["drift", "calibrate", "--benign", str(traffic), "--target-fpr", "0.05", "--out", str(overlay)])
    assert second.exit_code == 0, second.output
    data = json.loads(overlay.read_text())
    assert data["detectors"]["head"] == SHIPPED.digest and data["detectors"]["rows"] == {"calibration": 60, "held_out": 60}
    assert data["drift"]["head"] == AttackHead.load(shipped_path(DRIFT_FILE)).digest
    assert 0 <= data["drift"]["measured_fpr"]["value"] <= 1
    head = load_drift_head(load_settings(calibration=overlay))
    assert head.threshold == data["drift"]["threshold"]
    bad = tmp_path / "bad.csv"
    bad.write_text("text\nhello\n")
    refused = runner.invoke(app, ["detectors", "calibrate", "--benign", str(bad)])
    assert refused.exit_code == 2 and "needs the columns user_text and assistant_text" in refused.output
    get_settings.cache_clear()


def test_eval_refuses_to_report_the_shipped_heads_on_a_file_they_were_fitted_on(tmp_path) -> None:
    from pipeline.lab.detectors_cli import held_out_rows
    from pipeline.lab.evaluation import file_digest

    data = tmp_path / "fitted.jsonl"
    data.write_text('{"goal": "g", "prompt": "p", "response": "r", "jailbroken": 1}\n')
    with pytest.raises(ValueError, match="shipped heads were fitted on"):
        held_out_rows(None, data, {"sources": [{"name": "jailbreakbench", "sha256": file_digest(data)}]})
    rows, note = held_out_rows("frame", data, {"sources": [{"name": "other", "sha256": "0" * 64}]})
    assert rows == "frame" and note.startswith("all rows")


def test_a_configured_overlay_that_is_missing_fails_naming_the_key(tmp_path, embedder) -> None:
    settings = load_settings(calibration=tmp_path / "typo.json")
    with pytest.raises(HeadError, match="SAFEMON_CALIBRATION=.*typo.json: no such file"):
        load_head(settings, embedder)
    with pytest.raises(HeadError, match="SAFEMON_CALIBRATION"):
        load_drift_head(settings)


def test_drift_calibrate_reads_user_turns_alone(tmp_path, monkeypatch, embedder) -> None:
    from pipeline.cli import app
    from pipeline.lab.calibration import read_traffic
    from pipeline.settings import get_settings

    turns = tmp_path / "turns.csv"
    turns.write_text("user_text\n" + "\n".join(f"How do I plant tulip bulb number {i} in clay soil?" for i in range(60)) + "\n")
    assert read_traffic(turns, responses=False)["prompt"].tolist()[0].startswith("How do I plant")
    with pytest.raises(ValueError, match="needs the columns user_text and assistant_text"):
        read_traffic(turns)
    monkeypatch.setenv("SAFEMON_EMBEDDING_BACKEND", "torch")
    get_settings.cache_clear()
    done = CliRunner().invoke(app, ["drift", "calibrate", "--benign", str(turns), "--target-fpr", "0.05", "--out", str(tmp_path / "c.json")])
    get_settings.cache_clear()
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "c.json").read_text())["drift"]["rows"] == {"calibration": 30, "held_out": 30}
