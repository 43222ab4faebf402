"""Turn public conversation formats into conversation_sample.v1 JSONL, for demos, tests and drift baselines.

Converters are registered under `converter.<kind>` and yield `SourceConversation`s;
`convert_file` gives each one its identity and time and writes the JSONL:

- `sample_id` is a uuid5 of the kind, target, model_version, source position and source
  text, so converting the same file again gives the same ids (the worker stores each once),
  while converting it for another model_version gives new ones (it is another deployment).
- `occurred_at` spreads the samples evenly over the hour that ends at `now`, in source order.

Kinds: `hh-rlhf` (Anthropic HH-RLHF `chosen`/`rejected` transcripts) and `instructions`
(instruction lists as JSON, JSONL or plain text).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import structlog
from jsonschema.exceptions import best_match

from pipeline.records import ConversationSample, Turn, utc_now
from pipeline.registry import Registry
from pipeline.stream.contract import sample_to_dict, sample_to_json, schema_validator

log = structlog.get_logger(__name__)

# Fixed forever: changing it would change every converted sample_id.
NAMESPACE = uuid.UUID("0d4f4a4e-5c1b-4f7e-9a59-3b7e2f61c0aa")
SPREAD = timedelta(hours=1)


@dataclass(frozen=True)
class SourceConversation:
    """One conversation read from a public file, before it gets an id and a time."""

    key: str  # identifies the source record (position and text): the name of its uuid5
    conversation_id: str
    turns: tuple[Turn, ...]
    metadata: dict[str, str] = field(default_factory=dict)


Converter = Callable[..., Iterator[SourceConversation]]
CONVERTERS: Registry[Converter] = Registry("converter")


def convert_file(
    kind: str,
    path: Path,
    out: Path,
    *,
    target: str,
    model_version: str,
    limit: int | None = None,
    now: datetime | None = None,
    **options: Any,
) -> int:
    """Convert a public file to conversation_sample.v1 JSONL at `out`; returns the number of samples written.

    `options` go to the converter (e.g. `side="chosen"` for hh-rlhf).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    converter = CONVERTERS.get(kind)
    path, out = Path(path), Path(out)
    sources = list(islice(converter(path, **options), limit))
    samples = stamp(sources, kind=kind, target=target, model_version=model_version, now=now or utc_now())
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a failed conversion never leaves half a file.
    partial = out.with_name(f".{out.name}.partial")
    with partial.open("wb") as sink:
        for sample in samples:
            sink.write(sample_to_json(sample) + b"\n")
    os.replace(partial, out)
    log.info("convert.finished", kind=kind, source=str(path), out=str(out), samples=len(samples))
    return len(samples)


def stamp(sources: list[SourceConversation], *, kind: str, target: str, model_version: str, now: datetime) -> list[ConversationSample]:
    """Give converted conversations deterministic ids and times in the hour before `now`; check each against the schema."""
    samples = []
    step = SPREAD / max(len(sources), 1)
    start = now - SPREAD
    for i, source in enumerate(sources):
        occurred_at = start + step * (i + 1)
        sample = ConversationSample(
            sample_id=str(uuid.uuid5(NAMESPACE, "\x1f".join((kind, target, model_version, source.key)))),
            occurred_at=occurred_at.replace(microsecond=occurred_at.microsecond // 1000 * 1000),
            target=target,
            model_version=model_version,
            conversation_id=source.conversation_id,
            turns=source.turns,
            metadata=source.metadata,
        )
        error = best_match(schema_validator().iter_errors(sample_to_dict(sample)))
        if error is not None:
            raise ValueError(f"{kind} record {source.metadata.get('record', i)} breaks the contract: {error.message}")
        samples.append(sample)
    return samples


_SPEAKER = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_transcript(text: str) -> tuple[Turn, ...]:
    """Turns of an HH-RLHF transcript (`\\n\\nHuman: ...\\n\\nAssistant: ...`).

    Consecutive lines of one speaker are merged into one turn (a few source transcripts have
    two `Assistant:` lines in a row), so roles alternate as in a real chat log. An empty
    final answer is kept: it is what the model said.
    """
    parts = _SPEAKER.split(text)
    if len(parts) < 3:
        raise ValueError("no 'Human:' or 'Assistant:' turn in the transcript")
    turns: list[Turn] = []
    if parts[0].strip():
        turns.append(Turn("user", parts[0].strip()))
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        role, content = _ROLES[speaker], content.strip()
        if turns and turns[-1].role == role:
            merged = "\n\n".join(c for c in (turns[-1].content, content) if c)
            turns[-1] = Turn(role, merged)
        else:
            turns.append(Turn(role, content))
    return tuple(turns)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@CONVERTERS.register("hh-rlhf")
def read_hh_rlhf(path: Path, *, side: str = "rejected") -> Iterator[SourceConversation]:
    """HH-RLHF JSONL pairs: one sample per line from the `rejected` (more harmful) or `chosen` transcript."""
    if side not in ("chosen", "rejected"):
        raise ValueError(f"side must be 'chosen' or 'rejected', got {side!r}")
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            try:
                turns = parse_transcript(row[side])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: not an HH-RLHF pair ({exc})") from None
            yield SourceConversation(
                key=f"{number}\x1f{side}\x1f{line.rstrip()}",
                # Both sides share a conversation: they branch from the same human turns.
                conversation_id=f"hh-rlhf-{_digest(line.rstrip())}",
                turns=turns,
                metadata={"source": "hh-rlhf", "side": side, "file": path.name, "record": str(number)},
            )


def _instruction_records(path: Path) -> Iterator[tuple[int, Any]]:
    if path.suffix == ".txt":
        with path.open(encoding="utf-8") as lines:
            yield from ((n, line.rstrip("\r\n")) for n, line in enumerate(lines, 1) if line.strip())
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as lines:
            yield from ((n, json.loads(line)) for n, line in enumerate(lines, 1) if line.strip())
    else:
        records = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of instructions, got {type(records).__name__}")
        yield from enumerate(records, 1)


@CONVERTERS.register("instructions")
def read_instructions(path: Path, *, with_responses: bool = True) -> Iterator[SourceConversation]:
    """Instruction lists (JSON list, JSONL, or .txt one per line): one user turn each.

    Records are strings or objects with `instruction` (or `prompt`), an optional `input`
    appended to it, and an optional `output`/`response` that becomes the assistant turn when
    `with_responses`; without one the sample is a lone user turn.
    """
    for number, record in _instruction_records(path):
        if isinstance(record, str):
            record = {"instruction": record}
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {number} is neither a string nor an object")
        instruction = record.get("instruction", record.get("prompt"))
        if not isinstance(instruction, str):
            raise ValueError(f"{path}: record {number} has no 'instruction' string")
        extra = record.get("input")
        prompt = "\n\n".join(p for p in (instruction.strip(), extra.strip() if isinstance(extra, str) else "") if p)
        if not prompt:
            continue  # a blank instruction is not a conversation
        turns = [Turn("user", prompt)]
        response = record.get("output", record.get("response"))
        if with_responses and isinstance(response, str) and response.strip():
            turns.append(Turn("assistant", response.strip()))
        canonical = json.dumps(record, sort_keys=True, ensure_ascii=False)
        metadata = {"source": "instructions", "file": path.name, "record": str(number)}
        if isinstance(record.get("category"), str):
            metadata["category"] = record["category"]
        yield SourceConversation(
            key=f"{number}\x1f{canonical}",
            conversation_id=f"instr-{_digest(f'{path.name}:{number}:{canonical}')}",
            turns=tuple(turns),
            metadata=metadata,
        )
