"""Per-turn conversation scoring on real multi-turn data: the HH-RLHF red-team pairs.

    .venv/bin/python bench/conversations.py              # the 1,500 pairs of harmless_base_dev
    .venv/bin/python bench/conversations.py --pairs 500

Each pair's `chosen` and `rejected` transcripts (`parse_transcript`) go through the stream's
contract and its scorer (`StreamScorer`: redaction, every assistant turn scored in its context,
one row per conversation), both sides of a pair in the same batch. The two sides share every
turn but the final assistant one (pairs where they do not are counted and left out), and
annotators judged `rejected`'s final answer the more harmful. Printed, with 95% Wilson intervals:
how often each side is flagged; among flagged `rejected` sides, how often the first flagged turn
is the final (differing) one; and the share of pairs whose `rejected` side is flagged at an
earlier turn (in the context both sides share). Nothing here is fitted or tuned on these pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.records import ConversationSample, utc_now  # noqa: E402
from pipeline.settings import Settings, load_settings  # noqa: E402
from pipeline.stats import wilson_interval  # noqa: E402
from pipeline.stream.batch import Accepted, SourceRecord, StreamScorer  # noqa: E402
from pipeline.stream.contract import InvalidSample, parse_sample, sample_to_json  # noqa: E402
from pipeline.stream.convert import parse_transcript  # noqa: E402

PAIRS_FILE = ROOT.parent / "shared" / "datasets" / "hh_rlhf" / "harmless_base_dev.jsonl"
# Pairs scored per batch, both sides together (a batch's texts are embedded in one call).
CHUNK = 128


@dataclass(frozen=True)
class Side:
    """What the stream stored for one side of a pair."""

    n_assistant_turns: int
    first_flagged_turn: int  # 1-based among assistant turns; 0: none
    turn_attack_scores: tuple[float, ...]

    @property
    def flagged(self) -> bool:
        return self.first_flagged_turn > 0

    @property
    def flagged_at_final(self) -> bool:
        return self.flagged and self.first_flagged_turn == self.n_assistant_turns

    @property
    def flagged_earlier(self) -> bool:
        return self.flagged and self.first_flagged_turn < self.n_assistant_turns


@dataclass(frozen=True)
class Pair:
    record: int  # line number in the file
    chosen: Side
    rejected: Side


@dataclass(frozen=True)
class PairScores:
    pairs: list[Pair]  # pairs that share every turn but the final assistant one, both sides accepted
    read: int
    not_branching: int  # pairs whose sides differ elsewhere than in the final assistant turn
    rejected_by_contract: dict[str, int]  # InvalidSample code -> pairs left out for it
    seconds: float


def _sample(record: int, side: str, transcript: str) -> ConversationSample:
    return ConversationSample(
        sample_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"hh-rlhf:{record}:{side}")),
        occurred_at=utc_now() - timedelta(minutes=1),
        target="hh-rlhf",
        model_version=side,
        conversation_id=f"hh-rlhf-{record}",
        turns=parse_transcript(transcript),
        metadata={},
    )


def _branches(chosen: ConversationSample, rejected: ConversationSample) -> bool:
    """Whether the sides share every turn but their final assistant one."""
    a, b = chosen.turns, rejected.turns
    return len(a) == len(b) and a[:-1] == b[:-1] and a[-1].role == b[-1].role == "assistant"


def score_pairs(path: Path = PAIRS_FILE, limit: int | None = None, settings: Settings | None = None) -> PairScores:
    """Score the first `limit` pairs of an HH-RLHF file (all when None) through the stream's contract and scorer."""
    settings = settings or load_settings()
    now = utc_now()
    read, not_branching = 0, 0
    refused: dict[str, int] = {}
    kept: list[tuple[int, ConversationSample, ConversationSample]] = []
    with path.open(encoding="utf-8") as lines:
        for record, line in enumerate(lines, 1):
            if limit is not None and read >= limit:
                break
            if not line.strip():
                continue
            read += 1
            row = json.loads(line)
            try:
                chosen, rejected = (parse_sample(sample_to_json(_sample(record, s, row[s])), settings, now=now) for s in ("chosen", "rejected"))
            except InvalidSample as exc:
                refused[exc.code] = refused.get(exc.code, 0) + 1
                continue
            if not _branches(chosen, rejected):
                not_branching += 1
                continue
            kept.append((record, chosen, rejected))

    scorer = StreamScorer(settings)
    started = time.perf_counter()
    pairs: list[Pair] = []
    try:
        for i in range(0, len(kept), CHUNK):
            chunk = kept[i : i + CHUNK]
            samples = [s for _, chosen, rejected in chunk for s in (chosen, rejected)]
            accepted = [Accepted(SourceRecord("hh-rlhf", 0, k, None), s) for k, s in enumerate(samples)]
            rows = scorer.score(accepted)
            sides = [Side(r["n_assistant_turns"], r["first_flagged_turn"], tuple(r["turn_attack_scores"])) for r in rows]
            pairs += [Pair(record, sides[2 * k], sides[2 * k + 1]) for k, (record, _, _) in enumerate(chunk)]
    finally:
        scorer.close()
    return PairScores(pairs, read, not_branching, refused, time.perf_counter() - started)


def _share(k: int, n: int) -> str:
    low, high = wilson_interval(k, n)
    return f"{k}/{n} = {k / n:.3f} [{low:.3f}, {high:.3f}]" if n else f"{k}/0"


def figures(scores: PairScores) -> dict[str, tuple[int, int]]:
    """The reported counts, as (successes, trials)."""
    pairs = scores.pairs
    n = len(pairs)
    flagged_rejected = [p for p in pairs if p.rejected.flagged]
    return {
        "rejected flagged": (len(flagged_rejected), n),
        "chosen flagged": (sum(p.chosen.flagged for p in pairs), n),
        "rejected flagged at the final (differing) turn, of rejected flagged": (
            sum(p.rejected.flagged_at_final for p in flagged_rejected),
            len(flagged_rejected),
        ),
        "rejected flagged at an earlier turn (shared context), of pairs": (sum(p.rejected.flagged_earlier for p in pairs), n),
        "rejected first flagged at the final turn, of pairs": (sum(p.rejected.flagged_at_final for p in pairs), n),
        "chosen first flagged at the final turn, of pairs": (sum(p.chosen.flagged_at_final for p in pairs), n),
        "discordant pairs: rejected flagged, chosen not": (sum(p.rejected.flagged and not p.chosen.flagged for p in pairs), n),
        "discordant pairs: chosen flagged, rejected not": (sum(p.chosen.flagged and not p.rejected.flagged for p in pairs), n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=None, help="the first N pairs of the file (all: 1,500)")
    parser.add_argument("--file", type=Path, default=PAIRS_FILE)
    args = parser.parse_args()
    if not args.file.is_file():
        sys.exit(f"{args.file} is missing")
    scores = score_pairs(args.file, args.pairs)
    pairs = scores.pairs
    turns = [p.rejected.n_assistant_turns for p in pairs]
    samples = 2 * len(pairs)
    print(
        f"pairs read {scores.read}; scored {len(pairs)}; sides differing before the final answer {scores.not_branching}; refused by the contract {scores.rejected_by_contract}"
    )
    print(f"assistant turns per conversation: mean {sum(turns) / max(len(turns), 1):.2f}, max {max(turns, default=0)}")
    print(f"scored {samples} conversations in {scores.seconds:.1f}s ({samples / scores.seconds:.1f}/s)")
    for name, (k, n) in figures(scores).items():
        print(f"{name:72s} {_share(k, n)}")
    from scipy.stats import binomtest

    only_rejected = sum(p.rejected.flagged and not p.chosen.flagged for p in pairs)
    only_chosen = sum(p.chosen.flagged and not p.rejected.flagged for p in pairs)
    if only_rejected + only_chosen:
        p = binomtest(only_rejected, only_rejected + only_chosen, 0.5, alternative="greater").pvalue
        print(f"rejected flagged more often than chosen (exact McNemar on discordant pairs): one-sided p = {p:.2g}")


if __name__ == "__main__":
    main()
