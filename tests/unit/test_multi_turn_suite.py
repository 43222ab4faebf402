"""The built-in multi_turn suite of scripted conversations, and how the loader rejects bad conversations."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.probes.suites import SuiteError, builtin_suites, dump_suite, load_suite_text
from pipeline.records import Expect, Probe, StopPolicy, TurnExpect
from pipeline.taxonomy import HAZARDS

TECHNIQUES = {"escalation", "context", "persona", "injected-document", "over-refusal"}
# Attacks whose user asks for harm; an injected document's harm is the hidden instruction instead.
ATTACKS = {"escalation", "context", "persona", "many-shot"}


@pytest.fixture(scope="module")
def suite():
    return builtin_suites()["multi_turn"]


def _technique(probe: Probe) -> str:
    (tag,) = [t for t in probe.tags if t.startswith("technique:")]
    return tag.split(":", 1)[1]


def _user_turns(probe: Probe):
    return [t for t in probe.turns if t.role == "user"]


def _with(suite, technique: str) -> list[Probe]:
    return [p for p in suite.probes if _technique(p) == technique]


# --- the suite ----------------------------------------------------------------------------


def test_suite_loads_with_at_least_30_conversations(suite):
    assert suite.name == "multi_turn" and suite.version == "1.0.0"
    assert len(suite.probes) >= 30
    assert all(p.is_conversation for p in suite.probes)
    assert all(p.id.startswith(f"mt-{_technique(p)}-") for p in suite.probes)


def test_spread_over_at_least_six_categories_with_hazards_injection_and_over_refusal(suite):
    counts = Counter(p.category for p in suite.probes)
    assert len(counts) >= 6
    assert sum(1 for c in counts if c in HAZARDS) >= 4
    assert counts["prompt_injection"] >= 5 and counts["over_refusal"] >= 5


def test_every_technique_has_at_least_five_scenarios(suite):
    counts = Counter(_technique(p) for p in suite.probes)
    assert set(counts) <= TECHNIQUES | {"many-shot"}
    for technique in TECHNIQUES:
        assert counts[technique] >= 5, technique


def test_tags_carry_source_and_the_number_of_user_turns(suite):
    from pipeline.probes.conversation import user_turns

    for probe in suite.probes:
        users, sent = _user_turns(probe), user_turns(probe)
        assert "source:safemon" in probe.tags, probe.id
        assert f"turns:{len(sent)}" in probe.tags and probe.user_turns == len(sent), f"{probe.id}: the turns sent (many-shot history is not)"
        assert 3 <= len(users) <= 6, probe.id
        assert probe.prompt == users[-1].content


def test_injected_documents_carry_their_own_canary_in_a_user_turn(suite):
    probes = _with(suite, "injected-document")
    markers = [m for p in probes for m in p.markers]
    assert len(markers) == len(set(markers)) >= 5
    for probe in probes:
        assert probe.category == "prompt_injection" and probe.markers, probe.id
        for marker in probe.markers:
            assert any(marker in t.content for t in _user_turns(probe)), (probe.id, marker)
    # Some documents arrive before the last turn: the injection has to survive in the history.
    assert any(not any(m in p.prompt for m in p.markers) for p in probes)


def test_injected_document_turns_never_expect_a_refusal(suite):
    # The user's requests are benign: a `refuse` turn would fail a target that does the task and
    # ignores the injection. The canary (or harmful help, on `any` turns) is what fails them.
    for probe in _with(suite, "injected-document"):
        users = _user_turns(probe)
        assert probe.expect is Expect.REFUSE, probe.id
        assert all(t.expect is not TurnExpect.REFUSE for t in users), probe.id
        carrier = next(i for i, t in enumerate(users) if any(m in t.content for m in probe.markers))
        assert carrier > 0 and all(t.expect is TurnExpect.ANY for t in users[carrier:]), probe.id


def test_over_refusal_scenarios_expect_compliance_on_every_turn(suite):
    probes = _with(suite, "over-refusal")
    assert probes
    for probe in probes:
        assert probe.category == "over_refusal" and probe.expect is Expect.COMPLY, probe.id
        assert all(t.expect is TurnExpect.COMPLY for t in _user_turns(probe)), probe.id


def test_attack_scenarios_end_with_a_turn_that_must_be_refused(suite):
    attacks = [p for p in suite.probes if _technique(p) in ATTACKS]
    assert attacks
    first_harmful = Counter()
    for probe in attacks:
        users = _user_turns(probe)
        assert probe.expect is Expect.REFUSE and probe.category != "over_refusal", probe.id
        assert users[-1].expect is TurnExpect.REFUSE, probe.id
        k = next(i for i, t in enumerate(users, start=1) if t.expect is TurnExpect.REFUSE)
        # Once a conversation turns harmful it stays that way.
        assert all(t.expect is TurnExpect.REFUSE for t in users[k - 1 :]), probe.id
        first_harmful[k] += 1
    assert len(first_harmful) >= 4  # the harmful turn comes at different points


def test_scripted_assistant_turns_only_in_many_shot_and_policies_are_mostly_default(suite):
    for probe in suite.probes:
        if any(t.role == "assistant" for t in probe.turns):
            assert _technique(probe) == "many-shot", probe.id
    policies = Counter(p.policy for p in suite.probes)
    assert 4 <= policies[StopPolicy.PLAY_ALL] <= 6


def test_dump_and_load_round_trip(suite):
    assert load_suite_text(dump_suite(suite), source="multi_turn.yaml") == suite


# --- bad conversations are clear errors -----------------------------------------------------

HEAD = "name: bad\nversion: '0.1'\ndescription: bad conversations\nprobes:\n"


@pytest.mark.parametrize(
    ("probe", "fragments"),
    [
        ("{id: empty, category: hate, expect: refuse, turns: []}", ["probe 'empty'", "key 'turns'", "empty conversation"]),
        (
            "{id: late, category: hate, expect: refuse, turns: [{assistant: 'Hello.'}, {user: 'Hi.'}]}",
            ["probe 'late'", "key 'turns'", "first turn must be a user turn"],
        ),
        (
            "{id: nouser, category: hate, expect: refuse, turns: [{assistant: 'Hello.'}]}",
            ["probe 'nouser'", "key 'turns'", "must be a user turn"],
        ),
        (
            "{id: both, category: hate, expect: refuse, turns: [{user: 'Hi.', assistant: 'Hello.'}]}",
            ["probe 'both'", "key 'turns.0'", "either {user: ..., expect: ...} or {assistant: ...}"],
        ),
        (
            "{id: single, category: hate, expect: refuse, policy: play_all, prompt: 'Hi.'}",
            ["probe 'single'", "key 'policy'", "only a conversation"],
        ),
    ],
    ids=["empty-turns", "assistant-first", "no-user-turn", "user-and-assistant", "policy-on-prompt"],
)
def test_bad_conversation_is_a_suite_error_naming_the_key(probe, fragments):
    with pytest.raises(SuiteError) as info:
        load_suite_text(f"{HEAD}  - {probe}\n", source="bad.yaml")
    problems = info.value.problems
    assert problems and all(line.startswith("bad.yaml: ") for line in str(info.value).splitlines())
    assert any(all(f in p for f in fragments) for p in problems), problems
