"""Converters of public conversation formats, run on the real files in ../shared/datasets."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.records import Turn
from pipeline.settings import load_settings
from pipeline.stream.contract import parse_sample
from pipeline.stream.convert import CONVERTERS, convert_file, parse_transcript

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SETTINGS = load_settings()


def read(path: Path):
    return [parse_sample(line, SETTINGS, now=NOW) for line in path.read_bytes().splitlines()]


def test_registry_names():
    assert CONVERTERS.names() == ["hh-rlhf", "instructions"]


def test_unknown_kind_lists_valid_ones(tmp_path):
    with pytest.raises(KeyError, match="converter.hh-rlhf, converter.instructions"):
        convert_file("sharegpt", tmp_path / "x", tmp_path / "out.jsonl", target="t", model_version="v1")


def test_parse_transcript_merges_repeated_speakers_and_keeps_an_empty_answer():
    text = "\n\nHuman: hi there\n\nAssistant: Hello!\n\nAssistant:  How can I help?\n\nHuman: bye\n\nAssistant:"
    assert parse_transcript(text) == (
        Turn("user", "hi there"),
        Turn("assistant", "Hello!\n\nHow can I help?"),
        Turn("user", "bye"),
        Turn("assistant", ""),
    )
    with pytest.raises(ValueError, match="no 'Human:'"):
        parse_transcript("just text")


def test_hh_rlhf_converts_every_pair_with_alternating_roles(datasets, tmp_path):
    source = datasets / "hh_rlhf" / "harmless_base_dev.jsonl"
    out = tmp_path / "hh.jsonl"
    assert convert_file("hh-rlhf", source, out, target="demo", model_version="v1", now=NOW) == 1500
    samples = read(out)  # every converted sample passes the full contract
    assert len(samples) == 1500
    for sample in samples:
        roles = [t.role for t in sample.turns]
        assert roles[0] == "user" and roles[-1] == "assistant"
        assert all(a != b for a, b in itertools.pairwise(roles)), roles
        assert sample.metadata["side"] == "rejected"
    assert len({s.sample_id for s in samples}) == 1500
    assert max(len(s.turns) for s in samples) > 6  # real multi-turn conversations
    # Spread over the hour before `now`, in file order.
    times = [s.occurred_at for s in samples]
    assert times == sorted(times) and times[-1] == NOW and times[0] > NOW - timedelta(hours=1)

    first = json.loads(source.open().readline())
    assert samples[0].turns[0].content == first["rejected"].split("\n\nAssistant:")[0].removeprefix("\n\nHuman:").strip()


def test_hh_rlhf_ids_are_deterministic_and_distinguish_side_and_version(datasets, tmp_path):
    source = datasets / "hh_rlhf" / "harmless_base_dev.jsonl"
    runs = {}
    for name, side, version in [("a", "rejected", "v1"), ("b", "rejected", "v1"), ("chosen", "chosen", "v1"), ("v2", "rejected", "v2")]:
        out = tmp_path / f"{name}.jsonl"
        assert convert_file("hh-rlhf", source, out, target="demo", model_version=version, limit=200, now=NOW, side=side) == 200
        runs[name] = out
    assert runs["a"].read_bytes() == runs["b"].read_bytes()
    a, chosen, v2 = read(runs["a"]), read(runs["chosen"]), read(runs["v2"])
    assert not {s.sample_id for s in a} & {s.sample_id for s in chosen}
    assert not {s.sample_id for s in a} & {s.sample_id for s in v2}
    # Both sides branch from the same human turns: one conversation, different last answers.
    assert [s.conversation_id for s in a] == [s.conversation_id for s in chosen]
    differing = sum(x.turns[-1].content != y.turns[-1].content for x, y in zip(a, chosen, strict=True))
    assert differing > 190


def test_instructions_from_the_benign_set(datasets, tmp_path):
    out = tmp_path / "benign.jsonl"
    source = datasets / "benign_instructions" / "harmless_val.json"
    assert convert_file("instructions", source, out, target="demo", model_version="v1", now=NOW) == 6264
    samples = read(out)
    assert all(len(s.turns) == 1 and s.turns[0].role == "user" for s in samples)
    assert samples[0].turns[0].content == json.loads(source.read_text())[0]["instruction"]
    assert len({s.sample_id for s in samples}) == len({s.conversation_id for s in samples}) == 6264


def test_instructions_from_text_and_jsonl(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("Name three rivers in Poland.\n\n   \nWrite a haiku about rain.\n")
    assert convert_file("instructions", text, tmp_path / "a.jsonl", target="t", model_version="v1", now=NOW) == 2
    assert [s.turns[0].content for s in read(tmp_path / "a.jsonl")] == ["Name three rivers in Poland.", "Write a haiku about rain."]

    lines = tmp_path / "alpaca.jsonl"
    records = [
        {"instruction": "Translate to French", "input": "Good morning", "output": "Bonjour", "category": "translation"},
        {"instruction": "   ", "output": "skipped: nothing was asked"},
        {"prompt": "Say hi", "response": "Hi!"},
    ]
    lines.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = tmp_path / "b.jsonl"
    assert convert_file("instructions", lines, out, target="t", model_version="v1", now=NOW) == 2
    first, second = read(out)
    assert first.turns == (Turn("user", "Translate to French\n\nGood morning"), Turn("assistant", "Bonjour"))
    assert first.metadata["category"] == "translation" and second.turns[-1] == Turn("assistant", "Hi!")
    assert convert_file("instructions", lines, out, target="t", model_version="v1", now=NOW, with_responses=False) == 2
    assert all(len(s.turns) == 1 for s in read(out))


def test_bad_input_fails_loudly_and_leaves_no_file(tmp_path):
    source = tmp_path / "broken.jsonl"
    source.write_text(json.dumps({"chosen": "no speakers", "rejected": "no speakers"}) + "\n")
    out = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match="broken.jsonl:1: not an HH-RLHF pair"):
        convert_file("hh-rlhf", source, out, target="t", model_version="v1")
    assert not out.exists()
    with pytest.raises(ValueError, match="side must be"):
        convert_file("hh-rlhf", source, out, target="t", model_version="v1", side="both")
    with pytest.raises(ValueError, match="limit must be >= 0"):
        convert_file("hh-rlhf", source, out, target="t", model_version="v1", limit=-1)
