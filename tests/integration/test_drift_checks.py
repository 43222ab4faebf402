"""The drift check on the real engine: windows read from sample_scores, results and alerts stored."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import numpy as np

from pipeline.checks.drift import check_all, check_target
from pipeline.detectors import Detection
from pipeline.drift.attacks import AttackProfile
from pipeline.records import AlertKind, Judgement, utc_now
from pipeline.store.samples import SCORE_COLUMNS

DIM = 16


def insert_embeddings(client, target: str, start: datetime, vectors, *, model_version: str = "v1", categories=()) -> None:
    """Scored rows carrying the given embeddings, spread over the hour from `start`."""
    rows = []
    for i, vec in enumerate(vectors):
        detection = Detection(
            violation_scores={"hate": 0.1},
            violation_score=0.1,
            violation_category="hate",
            flagged_categories=tuple(categories) if i % 2 == 0 else (),
            detector_version="exemplars-test+torch",
        )
        row = dict(
            sample_id=str(uuid.uuid4()),
            occurred_at=start + timedelta(seconds=3000 * i / len(vectors)),
            target=target,
            model_version=model_version,
            conversation_id=f"c{i}",
            n_turns=2,
            n_assistant_turns=1,
            first_flagged_turn=1 if detection.flagged_categories else 0,
            turn_attack_scores=[detection.attack_score],
            risk=detection.attack_score,
            user_text=f"redacted text {i}",
            assistant_text="ok",
            **detection.columns(),
            **Judgement().columns(),
            pii_counts={},
            embedding=[float(x) for x in vec],
            metadata={},
            source_topic="t",
            source_partition=0,
            source_offset=i,
            scored_at=utc_now(),
        )
        rows.append([row[c] for c in SCORE_COLUMNS])
    client.insert("sample_scores", rows, column_names=list(SCORE_COLUMNS))


def _unit(rng, n, shift=0.0):
    x = rng.normal(size=(n, DIM))
    x[:, 0] += shift
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_drift_check_alerts_threads_and_survives_bad_windows(client, settings) -> None:
    settings = settings.model_copy(update={"drift_min_samples": 50, "drift_permutations": 200, "drift_methods": ["mmd", "c2st", "attack_share", "centroid"]})
    profile = AttackProfile(np.eye(DIM, dtype=np.float32)[[0, 1]], ["jailbreak:persona_roleplay", "benign"])
    rng = np.random.default_rng(0)
    end = utc_now().replace(minute=0, second=0, microsecond=0)
    hour, last_week = end - timedelta(hours=1), end - timedelta(hours=1, days=7)
    insert_embeddings(client, "bot", last_week, _unit(rng, 200))
    attacks = _unit(rng, 40, shift=4.0)
    insert_embeddings(client, "bot", hour, np.vstack([_unit(rng, 160), attacks]), categories=["cybercrime"])
    insert_embeddings(client, "quiet", last_week, _unit(rng, 200))
    insert_embeddings(client, "quiet", hour, _unit(rng, 200))
    insert_embeddings(client, "tiny", last_week, _unit(rng, 200))
    insert_embeddings(client, "tiny", hour, _unit(rng, 10))
    insert_embeddings(client, "broken", last_week, _unit(rng, 100)[:, :8])  # a model swap changed the dimension
    insert_embeddings(client, "broken", hour, _unit(rng, 100))
    dirty = _unit(rng, 120)
    dirty[:30] = np.nan
    dirty[30:60] = 0.0
    insert_embeddings(client, "dirty", last_week, _unit(rng, 200))
    insert_embeddings(client, "dirty", hour, dirty)

    checks = {c.target: c for c in check_all(client, settings, end, profile)}
    assert checks["tiny"].status == "insufficient_data" and checks["tiny"].alert is None
    assert checks["dirty"].status == "checked" and checks["dirty"].n_current == 60  # NaN and zero rows dropped
    assert checks["broken"].status == "error" and "dimension" in checks["broken"].error
    assert checks["quiet"].alert is None and not checks["quiet"].comparison.drifted
    bot = checks["bot"]
    assert "attack_share" in bot.comparison.drifted and bot.alert.status == "pending"
    assert bot.alert.alert.kind == AlertKind.DRIFT and bot.alert.alert.samples
    assert any(f.startswith("jailbreak:") for f, _ in bot.explanation.families)
    assert bot.explanation.categories and bot.explanation.categories[0].group == "cybercrime"

    again = {c.target: c for c in check_all(client, settings, end, profile)}  # a retried task
    assert again["bot"].alert.alert.alert_id == bot.alert.alert.alert_id
    stored = client.query("SELECT target, status, count() FROM drift_results FINAL GROUP BY target, status ORDER BY target").result_rows
    assert ("bot", "checked", 4) in stored and ("tiny", "insufficient_data", 4) in stored and ("broken", "error", 1) in stored
    latest = client.query("SELECT method, drifted FROM latest_drift WHERE target = 'bot' ORDER BY method").result_rows
    assert dict(latest)["attack_share"] is True

    # The next hour the attacks persist: a follow-up of the same fingerprint, not a new chain.
    insert_embeddings(client, "bot", end, np.vstack([_unit(rng, 160), _unit(rng, 40, shift=4.0)]))
    insert_embeddings(client, "bot", last_week + timedelta(hours=1), _unit(rng, 200))
    follow = {c.target: c for c in check_all(client, settings, end + timedelta(hours=1), profile)}["bot"]
    assert follow.alert.alert.fingerprint == bot.alert.alert.fingerprint and "persists" in follow.alert.alert.title


def test_the_reference_is_the_same_hour_of_past_weeks(client, settings) -> None:
    """attack_share reads every reference row of the past weeks' same hour; mmd reads a capped subsample."""
    settings = settings.model_copy(
        update={
            "drift_min_samples": 50,
            "drift_permutations": 200,
            "drift_reference_weeks": 3,
            "drift_max_samples": 150,
            "drift_methods": ["mmd", "attack_share"],
        }
    )
    profile = AttackProfile(np.eye(DIM, dtype=np.float32)[[0, 1]], ["jailbreak:persona_roleplay", "benign"])
    rng = np.random.default_rng(1)
    end = utc_now().replace(minute=0, second=0, microsecond=0)
    hour = end - timedelta(hours=1)
    for weeks in (1, 2, 3, 4):  # the fourth week back is outside the reference
        insert_embeddings(client, "weekly", hour - timedelta(weeks=weeks), _unit(rng, 100))
    insert_embeddings(client, "weekly", hour - timedelta(weeks=1, hours=2), _unit(rng, 100))  # between two reference hours
    insert_embeddings(client, "weekly", hour, _unit(rng, 100))

    check = check_target(client, settings, "weekly", "v1", end, profile)
    by_method = {r.method: r for r in check.comparison.results}
    assert check.n_reference == by_method["attack_share"].n_reference == 300
    assert by_method["mmd"].n_reference == 150 and check.n_current == 100
    stored = client.query("SELECT method, n_reference, reference_label FROM drift_results FINAL WHERE target = 'weekly'").result_rows
    assert {m: n for m, n, _ in stored} == {"mmd": 150, "attack_share": 300}
    assert all(label.endswith("and the 2 weeks before") for _, _, label in stored)
