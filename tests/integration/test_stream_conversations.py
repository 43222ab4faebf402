"""Multi-turn conversations through the real broker, the worker and the embedded ClickHouse engine:
each assistant turn is scored in its context, the conversation stored as one row with its first
flagged turn; conversations the stream cannot score go to the DLQ and rejected_samples."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pipeline.records import ConversationSample, Turn, utc_now
from tests.support.exchanges import BENIGN, HARMFUL, REFUSAL
from tests.support.poison import encode, sample_document
from tests.support.stream_worker import committed_offsets, make_sample, produce, query, read_topic, start_worker, worker_env

pytestmark = pytest.mark.kafka

MAX_TURNS = 8


def _conversation(*exchanges: tuple[str, str], system: str | None = None) -> ConversationSample:
    turns = ([Turn("system", system)] if system else []) + [
        Turn(role, text) for user, answer in exchanges for role, text in (("user", user), ("assistant", answer))
    ]
    return make_sample("unused", None, turns=tuple(turns))


def _bad(turns: list[dict[str, str]]) -> bytes:
    return encode(sample_document(utc_now(), turns=turns))


def test_conversations_are_stored_with_their_first_flagged_turn(settings, kafka_bootstrap, topic, tmp_path):
    from pipeline.store.client import open_store
    from pipeline.store.samples import flagged_samples
    from pipeline.stream.contract import sample_to_json

    # (sample, assistant turns, first flagged turn)
    good = [
        (_conversation(BENIGN, HARMFUL, REFUSAL), 3, 2),
        (_conversation(BENIGN, REFUSAL, HARMFUL, system="You are a helpful assistant."), 3, 3),
        (_conversation(HARMFUL, REFUSAL), 2, 1),
        (_conversation(BENIGN, REFUSAL), 2, 0),
        (_conversation(BENIGN), 1, 0),
        (_conversation(HARMFUL), 1, 1),
        (make_sample(BENIGN[0]), 0, 0),  # asked, not yet answered
    ]
    bad = [
        ("empty", _bad([]), "schema"),
        ("assistant_first", _bad([{"role": "assistant", "content": "Hi! How can I help?"}, {"role": "user", "content": "Hi"}]), "assistant_first"),
        ("no_user_turn", _bad([{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hello."}]), "no_user_turn"),
        ("too_many_turns", _bad([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}] * (MAX_TURNS // 2 + 1)), "too_many_turns"),
    ]
    values = [sample_to_json(s) for s, _, _ in good] + [value for _, value, _ in bad]
    start = utc_now() - timedelta(hours=1)
    env = worker_env(settings, bootstrap=kafka_bootstrap, topic=topic, group=f"group-{topic}", stream_max_turns=MAX_TURNS)
    worker = start_worker(env, tmp_path / "w.log", max_idle_seconds=5)
    positions = produce(kafka_bootstrap, topic, values)
    assert worker.wait(180) == 0, worker.tail()
    assert sum(committed_offsets(kafka_bootstrap, f"group-{topic}", topic).values()) == len(values)

    stored = {
        sample_id: rest
        for sample_id, *rest in query(
            settings,
            "SELECT sample_id, n_turns, n_assistant_turns, first_flagged_turn, length(turn_attack_scores), risk, arrayMax(arrayPushBack(turn_attack_scores, 0)),"
            " notEmpty(flagged_categories), user_text, assistant_text FROM sample_scores FINAL",
        )
    }
    assert len(stored) == len(good)
    for sample, n_answers, first in good:
        n_turns, n_assistant, first_flagged, n_scores, risk, top, flagged, user, answer = stored[sample.sample_id]
        assert (n_turns, n_assistant, first_flagged, n_scores) == (len(sample.turns), n_answers, first, n_answers), sample.turns
        assert flagged == (first > 0)
        assert risk == pytest.approx(top) if n_answers else risk == 0
        if first:  # the row reports the flagged turn's exchange
            assert (user, answer) == HARMFUL
    # The hourly rates count conversations: one per stored sample, in every hazard's denominator.
    rates = query(settings, "SELECT category, sum(n), sum(violations) FROM violation_rate_by_hour GROUP BY category")
    assert rates and all(n == len(good) for _, n, _ in rates)
    assert sum(k for _, _, k in rates) >= sum(first > 0 for _, _, first in good)
    # What a stream alert shows: the flagged turn of each flagged conversation.
    with open_store(settings) as client:
        shown = flagged_samples(client, "demo-assistant", start, utc_now() + timedelta(hours=1))
    assert {(u, a) for _, _, u, a in shown} == {HARMFUL}

    expected = {positions[len(good) + i]: code for i, (_, _, code) in enumerate(bad)}
    dead = read_topic(kafka_bootstrap, f"{topic}.dlq", len(expected), timeout_s=30)
    headers = [{k: v.decode() for k, v in r.headers} for r in dead]
    assert {(int(h["source_partition"]), int(h["source_offset"])): h["error"] for h in headers} == expected
    reasons = {h["error"]: h["reason"] for h in headers}
    assert "should be non-empty" in reasons["schema"]
    assert "opens with an assistant turn" in reasons["assistant_first"]
    assert "is a user turn" in reasons["no_user_turn"]
    assert "SAFEMON_STREAM_MAX_TURNS" in reasons["too_many_turns"]
    rejected = query(settings, "SELECT source_partition, source_offset, code FROM rejected_samples FINAL")
    assert {(p, o): c for p, o, c in rejected} == expected
