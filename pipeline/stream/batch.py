"""One batch of Kafka records through the pipeline: parse, dedupe, redact, embed, detect, rows.

Nothing here talks to Kafka or the store: the worker hands in records and the ids already
stored, and gets back rows for `sample_scores` and `rejected_samples`. PII is redacted from
every turn and metadata value before any text is embedded or put in a row. Every assistant turn
is scored in its context (`answered_turns`); a sample's one row carries its conversation's
verdict (`conversation_columns`).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from pipeline.detectors import Detection, Exchange, Scorer, redact
from pipeline.judge.cascade import Cascade, Case
from pipeline.records import ConversationSample, DecidedBy, Judgement, utc_now
from pipeline.settings import Settings
from pipeline.stream.contract import DUPLICATE_SAMPLE_ID, InvalidSample, parse_sample

log = structlog.get_logger(__name__)

# How much of a rejected message is kept in rejected_samples (the DLQ keeps all of it).
RAW_CHARS = 4096
# The longest a batch waits for the judge: the worker must poll Kafka again well within
# max.poll.interval.ms (300 s); calls still out are cancelled and their samples left unscored.
JUDGE_BATCH_DEADLINE_S = 60.0
# With a judge, a batch is scored in chunks of this many samples, each judged on a thread while the
# next is embedded. The batch's allowance is taken once, at its start, so its calls fall in the
# first chunks and overlap the embedding of the rest (smaller chunks embed less efficiently).
JUDGE_CHUNK = 256


@dataclass(frozen=True)
class SourceRecord:
    """A Kafka record as the pipeline sees it: where it came from and its bytes."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def from_consumer(cls, record: Any) -> SourceRecord:
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            value=record.value,
            key=record.key,
            timestamp_ms=record.timestamp or 0,
            headers=tuple((k, v or b"") for k, v in (record.headers or ())),
        )


@dataclass(frozen=True)
class Rejection:
    """A record refused by the stream, with the contract code and the reason.

    The reason is redacted here, once: validation messages quote field values, and the
    reason is stored, logged and sent as a DLQ header.
    """

    source: SourceRecord
    code: str
    reason: str
    sample_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", redact(self.reason).text)

    def row(self, attempt: int, rejected_at: datetime) -> dict[str, Any]:
        """The rejected_samples row: the message start escaped and redacted (the DLQ has the bytes)."""
        raw = (self.source.value or b"")[: RAW_CHARS * 4].decode("utf-8", errors="backslashreplace")[:RAW_CHARS]
        return {
            "source_topic": self.source.topic,
            "source_partition": self.source.partition,
            "source_offset": self.source.offset,
            "code": self.code,
            "reason": self.reason,
            "sample_id": self.sample_id,
            "raw": redact(raw).text,
            "raw_bytes": len(self.source.value or b""),
            "attempt": attempt,
            "rejected_at": rejected_at,
        }


@dataclass(frozen=True)
class Accepted:
    """A record that passed the contract, with its sample."""

    source: SourceRecord
    sample: ConversationSample


@dataclass
class Parsed:
    """The outcome of the per-record gate over one batch."""

    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    redelivered: int = 0


def parse_records(records: Iterable[SourceRecord], settings: Settings, *, now: datetime | None = None) -> Parsed:
    """Parse each record; invalid ones and second uses of a sample_id within the batch are rejected.

    Records are taken in (topic, partition, offset) order so the same batch always keeps the
    same copy of a duplicated id; a record seen twice at the same offset is counted once.
    """
    now = now or utc_now()
    out = Parsed()
    seen_offsets: set[tuple[str, int, int]] = set()
    first_seen: dict[str, SourceRecord] = {}
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        where = (record.topic, record.partition, record.offset)
        if where in seen_offsets:
            out.redelivered += 1
            continue
        seen_offsets.add(where)
        try:
            sample = parse_sample(record.value, settings, now=now)
        except InvalidSample as exc:
            out.rejected.append(Rejection(record, exc.code, str(exc)))
            continue
        earlier = first_seen.get(sample.sample_id)
        if earlier is not None:
            out.rejected.append(
                Rejection(
                    record,
                    DUPLICATE_SAMPLE_ID,
                    f"{DUPLICATE_SAMPLE_ID}: sample_id {sample.sample_id} already in this batch at partition {earlier.partition} offset {earlier.offset}",
                    sample.sample_id,
                )
            )
            continue
        first_seen[sample.sample_id] = record
        out.accepted.append(Accepted(record, sample))
    return out


def split_stored_duplicates(rows: Sequence[dict[str, Any]], stored: dict[str, tuple[int, int]]) -> tuple[list[dict[str, Any]], list[Rejection]]:
    """Keep rows whose sample_id is new or was stored from this very offset (a redelivery);
    reject rows whose id was stored from a different offset."""
    kept: list[dict[str, Any]] = []
    rejected: list[Rejection] = []
    for row in rows:
        origin = stored.get(row["sample_id"])
        here = (row["source_partition"], row["source_offset"])
        if origin is None or origin == here:
            kept.append(row)
            continue
        source = row["_source"]
        rejected.append(
            Rejection(
                source,
                DUPLICATE_SAMPLE_ID,
                f"{DUPLICATE_SAMPLE_ID}: sample_id {row['sample_id']} already stored from partition {origin[0]} offset {origin[1]}",
                row["sample_id"],
            )
        )
    return kept, rejected


@dataclass(frozen=True)
class RedactedSample:
    """The turns of a sample after PII redaction, and what was replaced."""

    turns: tuple[tuple[str, str], ...]  # (role, redacted content), in order
    metadata: dict[str, str]
    pii_counts: dict[str, int]

    @property
    def n_assistant_turns(self) -> int:
        return sum(role == "assistant" for role, _ in self.turns)


def redact_sample(sample: ConversationSample) -> RedactedSample:
    """Redact every turn and metadata value, summing the entities replaced."""
    counts: dict[str, int] = {}

    def clean(text: str) -> str:
        result = redact(text)
        for kind, n in result.counts.items():
            counts[kind] = counts.get(kind, 0) + n
        return result.text

    turns = tuple((t.role, clean(t.content)) for t in sample.turns)
    metadata = {k: clean(v) for k, v in sample.metadata.items()}
    return RedactedSample(turns=turns, metadata=metadata, pii_counts=counts)


@dataclass(frozen=True)
class AnsweredTurn:
    """One assistant turn of a sample in its context: the exchange the detectors score, and the
    turn's text as stored (a blank answer is stored as it came, and scored as no answer)."""

    exchange: Exchange
    assistant_text: str

    @property
    def user_text(self) -> str:
        return self.exchange.prompt


def answered_turns(redacted: RedactedSample) -> list[AnsweredTurn]:
    """Each assistant turn in its context, in order: the user turn before it as the prompt, every
    user turn up to it as the turns jailbreaks arrive in, and user and tool turns up to it as the
    turns injected instructions arrive in (as a probe conversation's turns are scored:
    `pipeline.probes.conversation`). User turns after the last answer are not scored: nothing
    answered them yet.

    A sample without an assistant turn has one exchange, with no answer to score (no answer is
    not a refusal): its last user turn, in the context of every turn.
    """
    users: list[str] = []
    untrusted: list[str] = []
    out: list[AnsweredTurn] = []
    for role, text in redacted.turns:
        if role == "assistant":
            exchange = Exchange(
                prompt=users[-1] if users else "",
                response=text if text.strip() else None,
                user_turns="\n\n".join(users),
                untrusted_turns="\n\n".join(untrusted),
            )
            out.append(AnsweredTurn(exchange, text))
            continue
        if role == "user":
            users.append(text)
        if role in ("user", "tool"):
            untrusted.append(text)
    if not out:
        exchange = Exchange(prompt=users[-1] if users else "", response=None, user_turns="\n\n".join(users), untrusted_turns="\n\n".join(untrusted))
        out.append(AnsweredTurn(exchange, ""))
    return out


def conversation_columns(turns: Sequence[AnsweredTurn], detections: Sequence[Detection], n_assistant_turns: int) -> dict[str, Any]:
    """The columns of a sample's row from its turns' detections: the conversation is flagged when
    any assistant turn is; its texts and detector columns are its first flagged turn's, else its
    last turn's (so a single exchange is stored as it is scored). With them, the conversation's
    own: how many assistant turns, the first flagged one (1-based; 0: none), each turn's attack
    score, and the risk (the highest of them)."""
    flagged = [k for k, d in enumerate(detections) if d.flagged_categories]
    # The first flagged turn counts among assistant turns: a sample without one has none.
    chosen = flagged[0] if flagged else len(detections) - 1
    scores = [d.attack_score for d in detections] if n_assistant_turns else []
    return {
        "user_text": turns[chosen].user_text,
        "assistant_text": turns[chosen].assistant_text,
        **detections[chosen].columns(),
        "n_assistant_turns": n_assistant_turns,
        "first_flagged_turn": chosen + 1 if flagged and n_assistant_turns else 0,
        "turn_attack_scores": scores,
        "risk": max(scores, default=detections[chosen].attack_score),
    }


def judged_hazards(judgement: Judgement, scored: dict[str, float], top: str) -> tuple[str, ...]:
    """The hazards a sample is flagged for when the judge decided it: none when it said safe; its
    categories that are hazards the heads score, else the heads' top hazard, when it said unsafe."""
    if judgement.judge_verdict != "unsafe":
        return ()
    named = tuple(sorted(c for c in judgement.judge_categories if c in scored))
    return named or ((top,) if top else ())


class StreamScorer:
    """Scores accepted samples with the shared detection `Scorer`, built once per worker process,
    and, when `SAFEMON_JUDGE_*` configure a judge, sends the uncertain answers to it within the
    hourly budget (see `pipeline.judge.cascade`)."""

    def __init__(self, settings: Settings) -> None:
        self.scorer = Scorer.from_settings(settings)
        self.embedder = self.scorer.embedder
        # A judge that cannot be used (no band for these heads, no model) fails here, at start-up.
        self.cascade = Cascade.configure(settings, self.scorer.head)
        # The last batch's judge figures: calls made, calls the budget dropped (uncertain samples
        # left unscored, audits skipped), samples left unscored for any reason.
        self.judge_figures: tuple[int, ...] = (0, 0, 0)
        self._judging = ThreadPoolExecutor(1, thread_name_prefix="judge")
        self._allowance = 0  # judge calls the current batch may still make

    def close(self) -> None:
        """Wait for the judging thread (a batch always collects its chunks, so none is left running)."""
        self._judging.shutdown(wait=True)

    def texts(self, samples: Sequence[ConversationSample]) -> list[str]:
        """Every distinct text scoring `samples` embeds: the detectors' for every assistant turn, and
        the turns' user texts (one of them is kept for drift)."""
        turns = [t for s in samples for t in answered_turns(redact_sample(s))]
        return list(dict.fromkeys([*self.scorer.texts([t.exchange for t in turns]), *(t.user_text for t in turns)]))

    def score(self, accepted: Sequence[Accepted], *, scored_at: datetime | None = None) -> list[dict[str, Any]]:
        """sample_scores rows for accepted records (each row also carries its `_source`)."""
        if not accepted:
            return []
        scored_at = scored_at or utc_now()
        if self.cascade is None:
            rows, self.judge_figures = self._judged(self._rows(accepted, scored_at), None)
            return rows
        deadline = time.monotonic() + JUDGE_BATCH_DEADLINE_S
        self._allowance = self.cascade.judge.hourly.available()
        chunks = [accepted[i : i + JUDGE_CHUNK] for i in range(0, len(accepted), JUDGE_CHUNK)]
        # One judging thread: chunks are judged in order, each within the judge's own concurrency,
        # and the allowance is spent on the first uncertain answers.
        # (The thread logs with the batch's bound context.)
        pending = [self._judging.submit(contextvars.copy_context().run, self._judged, self._rows(chunk, scored_at), deadline) for chunk in chunks]
        judged = [f.result() for f in pending]
        self.judge_figures = tuple(sum(figures) for figures in zip(*(f for _, f in judged), strict=True))
        return [row for rows, _ in judged for row in rows]

    def _rows(self, accepted: Sequence[Accepted], scored_at: datetime) -> list[dict[str, Any]]:
        redacted = [redact_sample(a.sample) for a in accepted]
        per_sample = [answered_turns(r) for r in redacted]
        turns = [t for ts in per_sample for t in ts]
        # Every turn's user text is embedded with the batch: the row keeps the vector of the turn
        # it reports (a single exchange: its only user text, as ever).
        detections = self.scorer.score([t.exchange for t in turns], also_embed=[t.user_text for t in turns])
        conversations = []
        start = 0
        for r, ts in zip(redacted, per_sample, strict=True):
            conversations.append(conversation_columns(ts, detections[start : start + len(ts)], r.n_assistant_turns))
            start += len(ts)
        user_vectors = self.embedder.encode([c["user_text"] for c in conversations])  # kept for drift
        rows = []
        for a, r, conversation, vector in zip(accepted, redacted, conversations, user_vectors, strict=True):
            s = a.sample
            rows.append(
                {
                    "sample_id": s.sample_id,
                    "occurred_at": s.occurred_at,
                    "target": s.target,
                    "model_version": s.model_version,
                    "conversation_id": s.conversation_id,
                    "n_turns": len(s.turns),
                    **conversation,
                    "pii_counts": r.pii_counts,
                    "embedding": vector.tolist(),
                    "metadata": r.metadata,
                    "source_topic": a.source.topic,
                    "source_partition": a.source.partition,
                    "source_offset": a.source.offset,
                    "scored_at": scored_at,
                    "_source": a.source,
                }
            )
        return rows

    def _judged(self, rows: list[dict[str, Any]], deadline: float | None) -> tuple[list[dict[str, Any]], tuple[int, int, int]]:
        """Every row with its judgement, and the judge's figures for them (calls, dropped, unscored):
        the heads' alone without a judge; with one, the cascade's within what is left of the batch's
        allowance and before its `deadline` (monotonic), the judge's hazards replacing the heads'
        flags where it decided."""
        for row in rows:
            row.update(Judgement(head_verdict="unsafe" if row["flagged_categories"] else "safe").columns())
        if self.cascade is None or deadline is None:
            return rows, (0, 0, 0)
        answered = [row for row in rows if row["assistant_text"].strip()]
        cases = [Case(r["sample_id"], r["user_text"], r["assistant_text"], r["attack_score"], r["head_verdict"]) for r in answered]
        outcome = self.cascade.run(cases, self._allowance, deadline_s=max(0.0, deadline - time.monotonic()))
        self._allowance -= outcome.calls
        self.cascade.judge.hourly.spend(outcome.calls)
        for row, judgement in zip(answered, outcome.judgements, strict=True):
            row.update(judgement.columns())
            if judgement.decided_by == DecidedBy.JUDGE:
                row["flagged_categories"] = judged_hazards(judgement, row["violation_scores"], row["violation_category"])
        unscored = sum(j.decided_by == DecidedBy.UNSCORED for j in outcome.judgements)
        return rows, (outcome.calls, outcome.dropped, unscored)

    def warm_up(self) -> None:
        """Load the model now, so the first batch (and a restart's first commit) does not wait for it."""
        self.embedder.encode(["warm up"])
