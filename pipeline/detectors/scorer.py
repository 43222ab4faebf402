"""The one detection contract: redacted exchanges in, one typed `Detection` per exchange out.

The probe path (a probe and the target's answer) and the stream path (a sampled conversation)
both build `Exchange`s from text that is already redacted and call `Scorer.score`. Which
detectors run is what `DETECTORS` holds: each registered detector fills some of `Detection`'s
fields, and a field no detector filled keeps its neutral default. Adding a detector is one
module that registers a class with:

- `__init__(embedder, head)`: build on the shared embedder (and the fitted head, if any);
- `fields`: the `Detection` fields it fills;
- `texts(exchanges)`: every text it will embed, so the scorer embeds a batch in one call;
- `detect(exchanges)`: one dict of its fields per exchange.

`Detection`'s fields are the detection columns of both `probe_results` and `sample_scores`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from pipeline.detectors.catalog import DETECTORS, exemplars_digest
from pipeline.detectors.embedder import Embedder, embedder_from_settings
from pipeline.detectors.head import HeadSet
from pipeline.detectors.shipped import card_errors, load_head

if TYPE_CHECKING:
    from pipeline.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Exchange:
    """One redacted exchange: the request, the answer (None when there is none to score), and
    the turns the attack detectors read (all user turns; user and tool turns, where injected
    instructions arrive). Both default to the prompt."""

    prompt: str
    response: str | None
    user_turns: str | None = None
    untrusted_turns: str | None = None

    @property
    def user_text(self) -> str:
        return self.prompt if self.user_turns is None else self.user_turns

    @property
    def untrusted_text(self) -> str:
        return self.user_text if self.untrusted_turns is None else self.untrusted_turns


@dataclass(frozen=True)
class Detection:
    """What the detectors say about one exchange; each field is a stored column."""

    refused: bool = False
    refusal_score: float = 0.0
    violation_scores: dict[str, float] = field(default_factory=dict)
    violation_score: float = 0.0  # the top category's score
    violation_category: str = ""
    flagged_categories: tuple[str, ...] = ()
    jailbreak_score: float = 0.0
    jailbreak_family: str = ""
    injection_score: float = 0.0
    injection_family: str = ""
    detector_version: str = ""  # which detectors scored it (Scorer.version)
    # How likely the answer gave harmful help (StackScore.attack_score). The judge cascade sends
    # answers whose score is near 0.5 to the judge (see pipeline.judge.cascade).
    attack_score: float = 0.0

    def columns(self) -> dict[str, Any]:
        """The stored columns, by name."""
        return {f: getattr(self, f) for f in DETECTION_COLUMNS}


DETECTION_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Detection))


class Detector(Protocol):
    fields: tuple[str, ...]

    def texts(self, exchanges: Sequence[Exchange]) -> Iterable[str]: ...

    def detect(self, exchanges: Sequence[Exchange]) -> list[dict[str, Any]]: ...


class Scorer:
    """The registered detectors on one embedder (and fitted head), built once per process."""

    def __init__(self, embedder: Embedder, head: HeadSet | None = None, detectors: Sequence[str] | None = None) -> None:
        self.embedder = embedder
        self.head = head
        made_by = f"head-{head.digest}" if head is not None else f"exemplars-{exemplars_digest()}"
        # Rates are only compared between results of one version: the same detectors on the same vectors.
        self.version = f"{made_by}+{embedder.backend}"
        # How often these detectors err, from the shipped heads' card (empty for other heads).
        self.errors = card_errors(head)
        self.detectors: dict[str, Detector] = {name: DETECTORS.get(name)(embedder, head) for name in (detectors or DETECTORS.names())}
        for name, detector in self.detectors.items():
            unknown = set(detector.fields) - set(DETECTION_COLUMNS)
            if unknown:
                raise ValueError(f"detector {name!r} fills fields Detection does not have: {sorted(unknown)}")

    @classmethod
    def from_settings(cls, settings: Settings) -> Scorer:
        """Every registered detector on the process-wide embedder, with the heads the settings choose (see `shipped`)."""
        embedder = embedder_from_settings(settings)
        return cls(embedder, head=load_head(settings, embedder))

    def only(self, names: Sequence[str]) -> Scorer:
        """A scorer with only these of this scorer's detectors: the same instances, so nothing
        (exemplar vectors, heads) is built again."""
        subset = copy.copy(self)
        subset.detectors = {name: self.detectors[name] for name in names}
        return subset

    def texts(self, exchanges: Sequence[Exchange]) -> list[str]:
        """Every distinct text the detectors embed for `exchanges`."""
        return list(dict.fromkeys(t for d in self.detectors.values() for t in d.texts(exchanges)))

    def score(self, exchanges: Sequence[Exchange], *, also_embed: Sequence[str] = ()) -> list[Detection]:
        """One Detection per exchange. Every text of the batch (and `also_embed`) is embedded in
        one call, one sort by length, when the embedder's cache holds them all; the detectors
        then read their vectors from the cache."""
        if not exchanges:
            return []
        texts = list(dict.fromkeys([*self.texts(exchanges), *also_embed]))
        if texts and self.embedder.cache_size >= len(texts):
            self.embedder.encode(texts)
        found: list[dict[str, Any]] = [{"detector_version": self.version} for _ in exchanges]
        for detector in self.detectors.values():
            for row, part in zip(found, detector.detect(exchanges), strict=True):
                row.update(part)
        detections = [Detection(**row) for row in found]
        log.debug("detectors.scored", n=len(detections), refused=sum(d.refused for d in detections))
        return detections
