"""The conversation_sample.v1 contract: every poison message gets its code, valid samples round-trip."""

from __future__ import annotations

import json
import sys
import unicodedata
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from jsonschema import Draft202012Validator

from pipeline.records import ConversationSample, Turn
from pipeline.settings import load_settings
from pipeline.stream.contract import (
    CODES,
    SCHEMA_PATH,
    ContractWindow,
    InvalidSample,
    fast_validator,
    format_timestamp,
    parse_sample,
    sample_to_json,
    schema_validator,
    validate_batch,
    validate_facts,
)
from tests.support.clock import FakeClock
from tests.support.poison import HOSTILE_TEXT, encode, fixture_samples, hostile_samples, poison_corpus, sample_document

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
DEFAULTS = load_settings()
# Small limits: every size-driven item is rebuilt to fit, and deep nesting stays under the
# interpreter's recursion limit, so the iterative depth check is what must catch it.
SMALL = load_settings(stream_max_message_bytes=2048, stream_max_turns=4, stream_max_turn_chars=50, stream_max_age_days=1)


def test_schema_is_valid_draft_2020_12():
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["turns"]["items"]["additionalProperties"] is False


def test_corpus_covers_every_rejection_code_but_the_workers():
    codes = {code for _, _, code in poison_corpus(DEFAULTS, now=NOW)}
    assert codes == set(CODES) - {"duplicate_sample_id"}


@pytest.mark.parametrize("limits", [DEFAULTS, SMALL], ids=["default_limits", "small_limits"])
def test_every_poison_message_is_rejected_with_its_code(limits):
    corpus = poison_corpus(limits, now=NOW)
    assert len(corpus) >= 35
    for name, value, code in corpus:
        with pytest.raises(InvalidSample) as caught:
            parse_sample(value, limits, now=NOW)
        assert caught.value.code == code, f"{name}: {caught.value}"
        message = str(caught.value)
        assert message.startswith(f"{code}: ") and len(caught.value.detail) > 10, name
        assert len(message) < 1500, f"{name}: message of {len(message)} chars"


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("unknown_role", ["'turns'/0/'role'", "'robot' is not one of"]),
        ("unknown_field", ["(root)", "'user_email' was unexpected"]),
        ("missing_sample_id", ["'sample_id' is a required property"]),
        ("bad_uuid", ["'sample_id'", "is not a 'uuid'"]),
        ("impossible_date", ["'occurred_at'", "is not a 'date-time'"]),
        ("wrong_type_content", ["'turns'/0/'content'", "is not of type 'string'"]),
        ("metadata_not_flat", ["'metadata'/'tags'"]),
        ("lone_surrogate_escape", ["'turns'/1/'content'", "\\ud800"]),
        ("nested_metadata", ["'metadata'/'a'", "deeper than 32"]),
        ("too_many_turns", ["201 turns", "SAFEMON_STREAM_MAX_TURNS"]),
        ("turn_too_long", ["'turns'/0/'content'", "100001 characters"]),
        ("future_timestamp", ["'occurred_at'", "SAFEMON_STREAM_MAX_FUTURE_S"]),
        ("oversize", ["SAFEMON_STREAM_MAX_MESSAGE_BYTES"]),
    ],
)
def test_messages_name_the_field(name, fragments):
    value = {n: v for n, v, _ in poison_corpus(DEFAULTS, now=NOW)}[name]
    with pytest.raises(InvalidSample) as caught:
        parse_sample(value, DEFAULTS, now=NOW)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_one_reason_per_field_best_first_with_a_count_of_the_rest():
    document = sample_document(NOW, sample_id="nope", target=7, model_version=8, turns=[{"role": "robot", "content": 1}])
    document.update({f"extra{i}": 1 for i in range(3)})  # one additionalProperties error
    with pytest.raises(InvalidSample) as caught:
        parse_sample(encode(document), DEFAULTS, now=NOW)
    detail = caught.value.detail
    assert detail.count("'sample_id'") == 1  # format and pattern both fail; one is reported
    assert detail.endswith("(+1 more)")  # 6 locations, 5 reported
    # jsonschema's relevance puts shallow errors first: the top-level ones before the turn's.
    assert detail.startswith("(root): Additional properties") and "'turns'/0" not in detail.split("; ")[1]


def _schema_edge_documents() -> list[object]:
    """Documents at every edge of the schema: types, lengths (astral characters count once),
    formats, blank names, metadata limits, turn shapes, plus every poison and valid message."""
    doc = lambda **o: sample_document(NOW, **o)  # noqa: E731
    strings: list[object] = ["", " ", "a", "a" * 256, "a" * 257, "\U0001d518" * 256, "\U0001d518" * 257, 42, 10**100, 1.5, None, True, [], {}]
    # Every character some regex dialect may call whitespace: blank names must be refused alike.
    spaces = [
        chr(c)
        for c in range(sys.maxunicode + 1)
        if not 0xD800 <= c < 0xE000 and (chr(c).isspace() or unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp", "Cc", "Cf"))
    ]
    strings += spaces + [f" {c} " for c in spaces] + [f"{c}x" for c in spaces]
    documents: list[object] = [doc(**{field: value}) for field in ("target", "model_version", "conversation_id") for value in strings]
    sample_ids = [
        str(uuid.uuid4()).upper(),
        "{" + str(uuid.uuid4()) + "}",
        uuid.uuid4().hex,
        "urn:uuid:" + str(uuid.uuid4()),
        str(uuid.uuid4()) + "\n",
        "g" * 8 + str(uuid.uuid4())[8:],
        7,
        None,
    ]
    stamps = [
        "2026-06-01t12:00:00z",
        "2026-06-01T12:00:00.123456789Z",
        "2026-06-01T12:00:00.1234567890Z",
        "2026-06-01T12:00:00+24:00",
        "2026-06-01T23:59:60Z",
        "2026-13-01T12:00:00Z",
        "2026-06-01T12:00:00-00:00",
        "2026-06-01 12:00:00Z",
        "2026-06-01T12:00:00Z\n",
        "\uff12026-06-01T12:00:00Z",
        1780000000,
    ]
    documents += [doc(sample_id=v) for v in sample_ids] + [doc(occurred_at=v) for v in stamps]
    metadata = [
        {},
        {f"k{i}": "v" for i in range(64)},
        {f"k{i}": "v" for i in range(65)},
        {"": "v"},
        {"k" * 128: "v"},
        {"k" * 129: "v"},
        {"\U0001d518" * 128: "v"},
        {"k": "v" * 4096},
        {"k": "v" * 4097},
        {"k": 1},
        {"k": None},
        [],
        "x",
    ]
    documents += [doc(metadata=m) for m in metadata]
    turns = [[{"role": r, "content": "hi"}] for r in ("system", "user", "assistant", "tool", "User", "", None)]
    turns += [[{"role": "user"}], [{"content": "hi"}], [{"role": "user", "content": 3}], ["hi"], [[]], [None]]
    documents += [doc(turns=t) for t in turns]
    for settings in (DEFAULTS, SMALL):
        for _, value, _ in poison_corpus(settings, now=NOW):
            try:
                documents.append(json.loads(value or b""))
            except (ValueError, RecursionError):  # not JSON: refused before the schema
                continue
    documents += [json.loads(value) for _, value in hostile_samples(NOW)]
    documents += [json.loads(sample_to_json(s)) for s in fixture_samples(DEFAULTS, now=NOW)]
    return documents


def test_fast_validator_agrees_with_the_reference():
    """The Rust validator passes documents without the reference: on every edge they must agree."""
    documents = _schema_edge_documents()
    disagree = [d for d in documents if fast_validator().is_valid(d) != schema_validator().is_valid(d)]
    assert not disagree, disagree[:5]
    valid = sum(schema_validator().is_valid(d) for d in documents)
    assert valid > 100 and len(documents) - valid > 100  # both verdicts are well represented


def test_size_is_checked_before_decoding():
    garbage = b"\xff" * (SMALL.stream_max_message_bytes + 1)
    with pytest.raises(InvalidSample) as caught:
        parse_sample(garbage, SMALL, now=NOW)
    assert caught.value.code == "too_large"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_not_json(literal):
    value = encode(sample_document(NOW))[:-1] + b', "metadata": {"x": ' + literal + b"}}"
    with pytest.raises(InvalidSample, match="^not_json: "):
        parse_sample(value, DEFAULTS, now=NOW)


def test_hostile_text_is_data():
    parsed = {name: parse_sample(value, DEFAULTS) for name, value in hostile_samples()}
    assert parsed["hostile_metadata"].metadata == HOSTILE_TEXT
    content = parsed["hostile_content"]
    assert content.conversation_id == "conv'); DROP TABLE alerts; --"
    assert [t.content for t in content.turns] == [
        HOSTILE_TEXT["prompt_injection"],
        HOSTILE_TEXT["sql_injection"],
        HOSTILE_TEXT["clickhouse_param"],
    ]


def test_fixture_samples_round_trip_byte_for_byte():
    samples = fixture_samples(DEFAULTS, now=NOW)
    assert len(samples) == 10 and len({s.conversation_id for s in samples}) == 5
    for sample in samples:
        value = sample_to_json(sample)
        again = parse_sample(value, DEFAULTS, now=NOW)
        assert again == sample
        assert sample_to_json(again) == value
    assert any(s.metadata for s in samples) and any(t.role == "tool" for s in samples for t in s.turns)


def test_parsed_values_are_normalised():
    sample_id = uuid.uuid4()
    document = sample_document(NOW, sample_id=str(sample_id).upper(), occurred_at="2026-06-01T13:59:58.123456789+02:00")
    sample = parse_sample(encode(document), DEFAULTS, now=NOW)
    assert sample.sample_id == str(sample_id)
    assert sample.occurred_at == datetime(2026, 6, 1, 11, 59, 58, 123000, tzinfo=UTC)
    assert sample.occurred_at.tzinfo is UTC
    assert sample.metadata == {} and isinstance(sample.turns[0], Turn)
    assert format_timestamp(sample.occurred_at) == "2026-06-01T11:59:58.123Z"


def test_limits_are_inclusive():
    at_limits = sample_document(
        NOW,
        occurred_at=format_timestamp(NOW + timedelta(seconds=SMALL.stream_max_future_s)),
        turns=[{"role": "user", "content": "x" * SMALL.stream_max_turn_chars}] + [{"role": "assistant", "content": ""}] * 3,
    )
    assert len(parse_sample(encode(at_limits), SMALL, now=NOW).turns) == SMALL.stream_max_turns
    oldest = sample_document(NOW, occurred_at=format_timestamp(NOW - timedelta(days=SMALL.stream_max_age_days)))
    assert parse_sample(encode(oldest), SMALL, now=NOW).occurred_at == NOW - timedelta(days=1)


def test_unknown_code_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown InvalidSample code"):
        InvalidSample("nope", "x")


def _sample(**changes) -> ConversationSample:
    base = ConversationSample(
        sample_id=str(uuid.uuid4()),
        occurred_at=NOW - timedelta(minutes=5),
        target="support-bot",
        model_version="v1",
        conversation_id="c1",
        turns=(Turn("user", "hi"), Turn("assistant", "hello")),
    )
    return replace(base, **changes)


def test_batch_contract_passes_good_batches_and_names_what_breaks():
    good = fixture_samples(DEFAULTS, now=NOW)
    report = validate_batch(good, DEFAULTS, now=NOW)
    assert report.success, report.failures
    assert report.evaluated == 12

    twin = _sample()
    bad = [
        *good,
        twin,
        twin,  # a reused sample_id
        _sample(occurred_at=NOW - timedelta(days=90)),  # outside the window
        _sample(turns=(Turn("robot", "beep"),)),  # a role the contract does not know
        _sample(model_version=""),
    ]
    report = validate_batch(bad, DEFAULTS, now=NOW)
    assert not report.success
    failed = " | ".join(report.failures)
    for column in ("sample_id", "age_s", "roles_known", "model_version"):
        assert f"on {column} failed" in failed, failed
    assert "on n_turns" not in failed and "on target" not in failed
    assert validate_batch([], DEFAULTS).success


def test_contract_window_counts_a_redelivered_record_once_and_a_reused_id_twice():
    samples = fixture_samples(DEFAULTS, now=NOW)
    window = ContractWindow(interval_s=3600)
    assert not window.due() and len(window) == 0
    batch = [(("t", 0, offset), s) for offset, s in enumerate(samples)]
    window.add(batch, NOW)
    window.add(batch[:4], NOW)  # the same records again: a batch processed twice after a failed commit
    assert len(window) == len(samples) and not window.due()  # open for less than an hour
    assert validate_facts(window.take(), DEFAULTS).success
    assert len(window) == 0 and not window.due()

    window.add(batch, NOW)
    window.add([(("t", 1, 0), samples[0])], NOW)  # the same sample_id from another offset: a producer reused it
    report = validate_facts(window.take(), DEFAULTS)
    assert not report.success and "expect_column_values_to_be_unique on sample_id failed" in report.failures[0]


def test_contract_window_is_due_after_its_interval_and_keeps_each_samples_age_when_accepted():
    clock = FakeClock()
    window = ContractWindow(interval_s=60, clock=clock.monotonic)
    window.add([], NOW)
    clock.advance(120)
    assert not window.due()  # nothing to check, however long it waited
    old = _sample(occurred_at=NOW - timedelta(days=DEFAULTS.stream_max_age_days) + timedelta(seconds=1))
    window.add([(("t", 0, 0), old)], NOW)
    clock.advance(59)
    assert not window.due()
    clock.advance(1)
    assert window.due()  # open since the first sample: the interval counts from there
    # Its age was taken when it was accepted: within the limit, however late the check runs.
    assert validate_facts(window.take(), DEFAULTS).success
    assert ContractWindow(interval_s=0).due() is False
    every_batch = ContractWindow(interval_s=0)
    every_batch.add([(("t", 0, 0), old)], NOW + timedelta(days=1))
    assert every_batch.due() and not validate_facts(every_batch.take(), DEFAULTS).success


def test_a_rejection_reason_that_quotes_a_value_is_redacted():
    from pipeline.stream.batch import SourceRecord, parse_records

    document = sample_document(target={"owner": "jane.doe@example.org"})  # not a string: the message quotes it
    (rejection,) = parse_records([SourceRecord("t", 0, 7, encode(document))], DEFAULTS).rejected
    assert "[EMAIL]" in rejection.reason and "jane.doe@example.org" not in rejection.reason
    row = rejection.row(1, datetime.now(UTC))
    assert "jane.doe" not in row["reason"] + row["raw"]
