"""One batch of Kafka records through the pipeline: parse, dedupe, redact, embed, detect, rows.

Nothing here talks to Kafka or the store: the worker hands in records and the ids already
stored, and gets back rows for `sample_scores` and `rejected_samples`. PII is redacted from
every turn and metadata value before any text is embedded or put in a row.
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

from pipeline.detectors import Exchange, Scorer, redact
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
    """The texts of a sample after PII redaction, and what was replaced."""

    user_text: str  # last user turn
    assistant_text: str  # last assistant turn
    user_turns: str  # every user turn: what jailbreak similarity reads
    untrusted_turns: str  # user and tool turns: where injected instructions arrive
    metadata: dict[str, str]
    pii_counts: dict[str, int]


def redact_sample(sample: ConversationSample) -> RedactedSample:
    """Redact every turn and metadata value, summing the entities replaced."""
    counts: dict[str, int] = {}

    def clean(text: str) -> str:
        result = redact(text)
        for kind, n in result.counts.items():
            counts[kind] = counts.get(kind, 0) + n
        return result.text

    turns = [(t.role, clean(t.content)) for t in sample.turns]
    metadata = {k: clean(v) for k, v in sample.metadata.items()}
    users = [c for r, c in turns if r == "user"]
    assistants = [c for r, c in turns if r == "assistant"]
    return RedactedSample(
        user_text=users[-1] if users else "",
        assistant_text=assistants[-1] if assistants else "",
        user_turns="\n\n".join(users),
        untrusted_turns="\n\n".join(c for r, c in turns if r in ("user", "tool")),
        metadata=metadata,
        pii_counts=counts,
    )


def judged_hazards(judgement: Judgement, scored: dict[str, float], top: str) -> tuple[str, ...]:
    """The hazards a sample is flagged for when the judge decided it: none when it said safe; its
    categories that are hazards the heads score, else the heads' top hazard, when it said unsafe."""
    if judgement.judge_verdict != "unsafe":
        return ()
    named = tuple(sorted(c for c in judgement.judge_categories if c in scored))
    return named or ((top,) if top else ())


def exchange_of(redacted: RedactedSample) -> Exchange:
    """The detection contract's view of a sample: its last exchange, and the turns attacks arrive in.
    A sample without an assistant answer has none to score (no answer is not a refusal)."""
    return Exchange(
        prompt=redacted.user_text,
        response=redacted.assistant_text if redacted.assistant_text.strip() else None,
        user_turns=redacted.user_turns,
        untrusted_turns=redacted.untrusted_turns,
    )


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
        """Every distinct text scoring `samples` embeds: the detectors' and the user text kept for drift."""
        redacted = [redact_sample(s) for s in samples]
        return list(dict.fromkeys([*self.scorer.texts([exchange_of(r) for r in redacted]), *(r.user_text for r in redacted)]))

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
        prompts = [r.user_text for r in redacted]
        detections = self.scorer.score([exchange_of(r) for r in redacted], also_embed=prompts)
        user_vectors = self.embedder.encode(prompts)  # kept for drift
        rows = []
        for a, r, detection, vector in zip(accepted, redacted, detections, user_vectors, strict=True):
            s = a.sample
            rows.append(
                {
                    "sample_id": s.sample_id,
                    "occurred_at": s.occurred_at,
                    "target": s.target,
                    "model_version": s.model_version,
                    "conversation_id": s.conversation_id,
                    "n_turns": len(s.turns),
                    "user_text": r.user_text,
                    "assistant_text": r.assistant_text,
                    **detection.columns(),
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
