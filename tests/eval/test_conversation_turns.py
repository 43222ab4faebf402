"""Per-turn conversation scoring on the HH-RLHF red-team pairs (bench/conversations.py prints the figures).

The two sides of a pair share every turn but the final assistant one, so each earlier turn, scored
in the context up to it, must get the same score on both sides: a side can only differ from the
other from its final turn on. And annotators judged `rejected`'s final answer the more harmful, so
the scorer should flag `rejected` more often than `chosen`.
"""

from __future__ import annotations

import pytest

from bench.conversations import figures, score_pairs
from tests.support.env import require


def test_hh_rlhf_pairs_differ_only_from_their_final_turn(datasets, record_property):
    path = datasets / "hh_rlhf" / "harmless_base_dev.jsonl"
    require(path.is_file(), f"{path} is missing")
    scores = score_pairs(path)
    pairs = scores.pairs
    assert pairs and all(p.rejected.n_assistant_turns >= 1 for p in pairs)
    for name, (k, n) in figures(scores).items():
        record_property(name, f"{k}/{n}")

    for p in pairs:
        chosen, rejected = p.chosen, p.rejected
        assert chosen.n_assistant_turns == rejected.n_assistant_turns, p.record
        # The shared turns score alike: a later turn never changes an earlier turn's score (up to
        # float rounding: a turn's row may fall elsewhere in the heads' matrix products).
        assert chosen.turn_attack_scores[:-1] == pytest.approx(rejected.turn_attack_scores[:-1], abs=1e-6), p.record
        if chosen.flagged_earlier or rejected.flagged_earlier:
            assert chosen.first_flagged_turn == rejected.first_flagged_turn, p.record
        if rejected.flagged_at_final:  # flagged only for its final answer: chosen was not flagged before it
            assert not chosen.flagged_earlier, p.record

    flagged_rejected = sum(p.rejected.flagged for p in pairs)
    flagged_chosen = sum(p.chosen.flagged for p in pairs)
    assert flagged_rejected > flagged_chosen, (flagged_rejected, flagged_chosen, len(pairs))
