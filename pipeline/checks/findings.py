"""What a check found, in the one shape the alert decision takes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pipeline.records import AlertKind, Comparison, Sample, Source


class CheckStatus(StrEnum):
    """How a stream-window or drift check ended: compared, too few samples to compare, or bad stored input."""

    CHECKED = "checked"
    INSUFFICIENT_DATA = "insufficient_data"
    ERROR = "error"


@dataclass(frozen=True)
class Finding:
    """One check's conclusion about one subject (a probe run, or a traffic window of a target).

    `flagged` names what crossed the line (categories or drift methods: significant after
    correction, with an effect over the minimum); `problems` says why a run cannot support a
    verdict at all. A finding with neither is a clean check, which closes an open chain.
    """

    source: Source
    kind: AlertKind  # the condition checked: REGRESSION, DRIFT or DATA_QUALITY
    target: str
    suite: str  # the probe suite; "" for stream and drift findings
    model_version: str
    run_id: str  # the probe run id, or the window's label
    baseline_model_version: str = ""
    baseline_run_id: str = ""
    flagged: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    comparisons: tuple[Comparison, ...] = ()
    summary: str = ""
    samples: tuple[Sample, ...] = ()
    sql: str = ""  # what a person pastes into `safemon sql` to see the numbers

    @property
    def firing(self) -> bool:
        return bool(self.flagged or self.problems)
