"""The `conversation_sample.v1` contract: turn one Kafka message into a ConversationSample, or say why not.

`parse_sample` is the per-record gate of the stream. It checks, cheapest first: size
(before decoding, so a huge message costs nothing), strict UTF-8, JSON (no NaN/Infinity,
no duplicate keys, no nesting deeper than MAX_DEPTH), the JSON Schema in
`schemas/events/conversation_sample.v1.json`, then the limits that come from settings
(turn count, turn length, blank conversations, the occurred_at window) and the order of roles
(a user turn, and no assistant turn before the first user or tool turn). Every failure is an
`InvalidSample` whose `code` is a short machine reason (a DLQ header and a column of
`rejected_samples`) and whose message names the field.

`validate_batch` is the batch-level data contract (a Great Expectations suite) that the
worker runs over the samples that passed (a `ContractWindow` of batches at a time), to log
and record traffic that looks wrong as a whole; it rejects nothing by itself.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import jsonschema_rs
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, relevance

from pipeline.paths import SCHEMAS
from pipeline.records import ConversationSample, Turn, utc_now
from pipeline.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.quality.suites import QualityReport

SCHEMA_PATH = SCHEMAS / "events" / "conversation_sample.v1.json"
ROLES = ("system", "user", "assistant", "tool")
# A valid sample nests 3 levels (object > turns > turn); anything far deeper is an attack
# on the parser or on whatever walks the document later.
MAX_DEPTH = 32
# Schema errors quoted in one message; the rest are counted.
MAX_REPORTED_ERRORS = 5
MAX_ERROR_CHARS = 200

# Codes of InvalidSample: short, stable, used as DLQ headers and stored in rejected_samples.
TOMBSTONE = "tombstone"
TOO_LARGE = "too_large"
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
TOO_DEEP = "too_deep"
SCHEMA = "schema"
TOO_MANY_TURNS = "too_many_turns"
TURN_TOO_LONG = "turn_too_long"
EMPTY_TURNS = "empty_turns"
NO_USER_TURN = "no_user_turn"
ASSISTANT_FIRST = "assistant_first"
FUTURE_TIMESTAMP = "future_timestamp"
STALE_TIMESTAMP = "stale_timestamp"
DUPLICATE_SAMPLE_ID = "duplicate_sample_id"  # raised by the worker: the sample_id was already stored
CODES = (
    TOMBSTONE,
    TOO_LARGE,
    NOT_UTF8,
    NOT_JSON,
    TOO_DEEP,
    SCHEMA,
    TOO_MANY_TURNS,
    TURN_TOO_LONG,
    EMPTY_TURNS,
    NO_USER_TURN,
    ASSISTANT_FIRST,
    FUTURE_TIMESTAMP,
    STALE_TIMESTAMP,
    DUPLICATE_SAMPLE_ID,
)

_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})")


class InvalidSample(ValueError):
    """A message that breaks the conversation_sample.v1 contract; `code` says which rule, the message where."""

    def __init__(self, code: str, detail: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown InvalidSample code {code!r}; valid: {', '.join(CODES)}")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 date-time with an explicit offset, as an aware datetime (ValueError otherwise)."""
    match = _TIMESTAMP.fullmatch(text)  # not match(): "$" would let a trailing newline through
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 date-time with an offset")
    day, clock, fraction, offset = match.groups()
    # datetime keeps microseconds: nanosecond digits are dropped, not rounded.
    micros = (fraction or "0")[:6].ljust(6, "0")
    offset = "+00:00" if offset in ("Z", "z") else offset
    return datetime.fromisoformat(f"{day}T{clock}.{micros}{offset}")


def _format_checker() -> FormatChecker:
    # jsonschema only checks "date-time" when rfc3339-validator is installed; this one is
    # always on and agrees with parse_timestamp, which builds the record.
    checker = FormatChecker(formats=("uuid",))

    @checker.checks("date-time", raises=ValueError)
    def is_datetime(instance: object) -> bool:
        if not isinstance(instance, str):
            return True
        parse_timestamp(instance)
        return True

    return checker


@lru_cache(maxsize=1)
def schema_validator() -> Draft202012Validator:
    """The compiled conversation_sample.v1 validator (format checks on): the reference, and the
    one whose errors name what is wrong."""
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=_format_checker())


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _is_datetime(text: str) -> bool:
    try:
        parse_timestamp(text)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=1)
def fast_validator() -> jsonschema_rs.Validator:
    """The same schema compiled by jsonschema-rs (Rust), with the same format checks.

    It passes a valid sample many times faster than `schema_validator`, whose time would be
    most of the stream's parsing cost (`bench/stream.py` times validation); whatever it refuses goes to the
    reference, which decides and words the reason. The two agree on every document of the
    test corpus (tests/unit/test_contract.py); the schema's not-blank patterns are written so
    that Python's and ECMA-262's regex dialects read them alike.
    """
    schema = json.loads(SCHEMA_PATH.read_text())
    return jsonschema_rs.Draft202012Validator(schema, validate_formats=True, formats={"uuid": _is_uuid, "date-time": _is_datetime})


def parse_sample(value: bytes | None, settings: Settings, *, now: datetime | None = None) -> ConversationSample:
    """Validate one Kafka message value and return the sample it carries; raise InvalidSample otherwise."""
    if value is None:
        raise InvalidSample(TOMBSTONE, "the message has no value (a tombstone)")
    if len(value) > settings.stream_max_message_bytes:
        raise InvalidSample(
            TOO_LARGE,
            f"{len(value)} bytes, more than the {settings.stream_max_message_bytes} allowed (SAFEMON_STREAM_MAX_MESSAGE_BYTES)",
        )
    try:
        text = bytes(value).decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidSample(NOT_UTF8, f"byte {exc.start} ({bytes(value)[exc.start : exc.start + 1]!r}): {exc.reason}") from None
    document = _load_json(text)
    _check_schema(document)
    return _check_semantics(document, settings, now or utc_now())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two values for one key would let the producer and the store disagree on which counts.
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return document


def _load_json(text: str) -> Any:
    try:
        document = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        # The C decoder recurses per bracket and stops at the interpreter's recursion limit.
        raise InvalidSample(TOO_DEEP, f"nesting deeper than the interpreter can parse (limit {MAX_DEPTH})") from None
    except json.JSONDecodeError as exc:
        raise InvalidSample(NOT_JSON, f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # NaN/Infinity, duplicate keys, integers with absurdly many digits
        raise InvalidSample(NOT_JSON, str(exc)) from None
    _check_structure(document)
    return document


def _check_structure(document: Any) -> None:
    """Reject nesting deeper than MAX_DEPTH and strings that cannot be encoded back to UTF-8."""
    # Iterative on purpose: a recursive walk would hit the very limit this guards against.
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(document, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict | list) and len(path) >= MAX_DEPTH:
            raise InvalidSample(TOO_DEEP, f"{_path_text(path[:4])}/...: nesting deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            for key, child in node.items():
                _check_text(key, path)
                stack.append((child, (*path, key)))
        elif isinstance(node, list):
            stack.extend((child, (*path, i)) for i, child in enumerate(node))
        elif isinstance(node, str):
            _check_text(node, path)


def _check_text(text: str, path: tuple[str | int, ...]) -> None:
    # "\ud800" is valid JSON but decodes to a lone surrogate that no UTF-8 sink accepts.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidSample(NOT_UTF8, f"{_path_text(path)}: lone surrogate \\u{ord(text[exc.start]):04x} at character {exc.start}") from None


def _path_text(path: Sequence[str | int]) -> str:
    """A JSON location as the messages write it: 'turns'/0/'role', or (root)."""
    return "/".join(repr(p) if isinstance(p, str) else str(p) for p in path) or "(root)"


def _describe(error: ValidationError) -> str:
    message = error.message
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    return f"{_path_text(error.absolute_path)}: {message}"


def _check_schema(document: Any) -> None:
    try:
        if fast_validator().is_valid(document):
            return
    except (ValueError, OverflowError):  # a value the Rust side cannot convert: the reference decides
        pass
    errors = sorted(schema_validator().iter_errors(document), key=relevance, reverse=True)
    if not errors:
        return
    # The most relevant error per location: a bad UUID breaks both `format` and `pattern`,
    # and one reason per field reads better in a DLQ header.
    best: dict[tuple[str | int, ...], ValidationError] = {}
    for error in errors:
        best.setdefault(tuple(error.absolute_path), error)
    described = [_describe(e) for e in list(best.values())[:MAX_REPORTED_ERRORS]]
    more = len(best) - len(described)
    raise InvalidSample(SCHEMA, "; ".join(described) + (f" (+{more} more)" if more else ""))


def _check_semantics(document: dict[str, Any], settings: Settings, now: datetime) -> ConversationSample:
    raw_turns = document["turns"]
    if len(raw_turns) > settings.stream_max_turns:
        raise InvalidSample(TOO_MANY_TURNS, f"'turns': {len(raw_turns)} turns, more than the {settings.stream_max_turns} allowed (SAFEMON_STREAM_MAX_TURNS)")
    for i, turn in enumerate(raw_turns):
        if len(turn["content"]) > settings.stream_max_turn_chars:
            raise InvalidSample(
                TURN_TOO_LONG,
                f"'turns'/{i}/'content': {len(turn['content'])} characters, more than the "
                f"{settings.stream_max_turn_chars} allowed (SAFEMON_STREAM_MAX_TURN_CHARS)",
            )
    # One empty turn is data (an empty answer is worth seeing); a conversation of nothing is not.
    if not any(turn["content"].strip() for turn in raw_turns):
        raise InvalidSample(EMPTY_TURNS, f"'turns': all {len(raw_turns)} turn(s) are empty or whitespace")
    # Each assistant turn is scored as the answer to the user turn before it: a conversation needs
    # a request, and cannot open with an answer to nothing (system and tool turns may come first).
    roles = [turn["role"] for turn in raw_turns]
    if "user" not in roles:
        counts = ", ".join(f"{roles.count(r)} {r}" for r in ROLES if r in roles)
        raise InvalidSample(NO_USER_TURN, f"'turns': none of the {len(roles)} turn(s) is a user turn ({counts}): nothing was asked")
    first = next(i for i, role in enumerate(roles) if role != "system")
    if roles[first] == "assistant":
        raise InvalidSample(
            ASSISTANT_FIRST, f"'turns'/{first}/'role': the conversation opens with an assistant turn, before any user or tool turn: it answers nothing"
        )

    occurred_at = parse_timestamp(document["occurred_at"]).astimezone(UTC)
    occurred_at = occurred_at.replace(microsecond=occurred_at.microsecond // 1000 * 1000)
    if occurred_at > now + timedelta(seconds=settings.stream_max_future_s):
        raise InvalidSample(
            FUTURE_TIMESTAMP,
            f"'occurred_at': {document['occurred_at']} is more than {settings.stream_max_future_s:g} s after now "
            f"({now.isoformat()}; SAFEMON_STREAM_MAX_FUTURE_S)",
        )
    if occurred_at < now - timedelta(days=settings.stream_max_age_days):
        raise InvalidSample(
            STALE_TIMESTAMP,
            f"'occurred_at': {document['occurred_at']} is more than {settings.stream_max_age_days:g} days before now "
            f"({now.isoformat()}; SAFEMON_STREAM_MAX_AGE_DAYS)",
        )

    return ConversationSample(
        # Canonical lower-case form: the idempotency key must not depend on the producer's casing.
        sample_id=str(uuid.UUID(document["sample_id"])),
        occurred_at=occurred_at,
        target=document["target"],
        model_version=document["model_version"],
        conversation_id=document["conversation_id"],
        turns=tuple(Turn(role=t["role"], content=t["content"]) for t in raw_turns),
        metadata=dict(document.get("metadata", {})),
    )


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and a Z, the store's precision."""
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    # isoformat, unlike strftime's %Y, zero-pads years before 1000.
    return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def sample_to_dict(sample: ConversationSample) -> dict[str, Any]:
    """The sample as the JSON document of the contract (keys in schema order)."""
    document: dict[str, Any] = {
        "sample_id": sample.sample_id,
        "occurred_at": format_timestamp(sample.occurred_at),
        "target": sample.target,
        "model_version": sample.model_version,
        "conversation_id": sample.conversation_id,
        "turns": [{"role": t.role, "content": t.content} for t in sample.turns],
    }
    if sample.metadata:
        document["metadata"] = dict(sample.metadata)
    return document


def sample_to_json(sample: ConversationSample) -> bytes:
    """The canonical message bytes of a sample: compact UTF-8 JSON, what producers should send."""
    return json.dumps(sample_to_dict(sample), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sample_facts(sample: ConversationSample, now: datetime) -> dict[str, Any]:
    """The checkable facts of one sample, as the batch suite reads them (`now` is when it was accepted)."""
    return {
        "sample_id": sample.sample_id,
        "n_turns": len(sample.turns),
        "total_chars": sum(len(t.content) for t in sample.turns),
        "max_turn_chars": max((len(t.content) for t in sample.turns), default=0),
        "age_s": (now - sample.occurred_at).total_seconds(),
        "target": sample.target,
        "model_version": sample.model_version,
        "roles_known": all(t.role in ROLES for t in sample.turns),
    }


FACT_COLUMNS = ("sample_id", "n_turns", "total_chars", "max_turn_chars", "age_s", "target", "model_version", "roles_known")


def batch_facts(samples: Sequence[ConversationSample], now: datetime) -> pd.DataFrame:
    """One row of checkable facts per sample (the frame the batch suite validates)."""
    return facts_frame([sample_facts(s, now) for s in samples])


def facts_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows, columns=list(FACT_COLUMNS))


class ContractWindow:
    """The samples the stream accepted since its last batch-contract check, with their facts.

    A Great Expectations run costs much the same CPU whatever its row count (it builds a metric
    graph per expectation), so the worker checks what it accepted over `interval_s` at once
    rather than each batch. Facts are taken when a sample is accepted (its age then) and keyed
    by where the record came from, so a batch processed again after a failed commit or a
    rebalance counts once, while one sample_id sent twice (two offsets) still fails uniqueness.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._facts: dict[tuple[str, int, int], dict[str, Any]] = {}
        self._opened: float | None = None

    def __len__(self) -> int:
        return len(self._facts)

    def add(self, accepted: Iterable[tuple[tuple[str, int, int], ConversationSample]], now: datetime) -> None:
        for source, sample in accepted:
            self._facts[source] = sample_facts(sample, now)
        if self._facts and self._opened is None:
            self._opened = self._clock()

    def due(self) -> bool:
        """Whether the window holds samples and has been open for `interval_s`."""
        return self._opened is not None and self._clock() - self._opened >= self.interval_s

    def take(self) -> pd.DataFrame:
        """The window's facts as a frame; the window starts again empty."""
        frame = facts_frame(list(self._facts.values()))
        self._facts, self._opened = {}, None
        return frame


def validate_batch(samples: Sequence[ConversationSample], settings: Settings | None = None, *, now: datetime | None = None) -> QualityReport:
    """Check a batch of parsed samples against `schemas/expectations/conversation_samples.json`."""
    return validate_facts(batch_facts(samples, now or utc_now()), settings)


def validate_facts(frame: pd.DataFrame, settings: Settings | None = None) -> QualityReport:
    """Check sample facts (`batch_facts`, `ContractWindow.take`) against the batch suite.

    No rows means nothing to check: it passes without loading Great Expectations.
    """
    from pipeline.quality.suites import QualityReport, validate

    if frame.empty:
        return QualityReport(success=True, failures=(), evaluated=0)
    if settings is None:
        from pipeline.settings import get_settings

        settings = get_settings()
    return validate(
        "conversation_samples",
        frame,
        {
            "max_turns": settings.stream_max_turns,
            "max_turn_chars": settings.stream_max_turn_chars,
            # Each character costs at least one byte of the message, so this bounds the total.
            "max_total_chars": settings.stream_max_message_bytes,
            "min_age_s": -settings.stream_max_future_s,
            "max_age_s": settings.stream_max_age_days * 86_400,
        },
    )
