"""The cascade: the heads decide what they are sure of; the judge decides the rest, and audits a
share of what the heads decided.

An exchange whose attack score (`Detection.attack_score`) falls inside the band [low, high) is
uncertain: it goes to the judge, whose verdict decides. A judge failure, an answer outside its
grammar, or a call the budget has no room for leaves the exchange unscored, with the reason:
never a verdict. A deterministic share of the confident exchanges (by key) also goes to the
judge when the budget allows, as an audit: the head still decides, and the stored pair measures
how well the two agree.

The band comes from `SAFEMON_JUDGE_BAND`, or from the shipped heads' card: the narrowest band
holding `SAFEMON_JUDGE_SHARE` of its held-out answers, or, when `SAFEMON_JUDGE_TARGET_ACCURACY`
is set, the narrowest outside which their held-out accuracy reaches it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from pipeline.detectors.head import HeadSet
from pipeline.detectors.shipped import CARD_FILE, shipped_path
from pipeline.judge.client import Judge, JudgeConfig, Ruling
from pipeline.records import DecidedBy, Judgement
from pipeline.settings import ConfigError, Settings

log = structlog.get_logger(__name__)

UNCERTAIN = "uncertain"
AUDIT = "audit"
BUDGET_EXHAUSTED = "judge budget exhausted"
AUDIT_RESERVE = 0.1  # share of a budget kept for audits while uncertain answers would take it all


class JudgeConfigError(ConfigError):
    """The judge cannot be used as configured; the message names the setting to change."""


Row = dict[str, float]


def band_for_accuracy(table: Sequence[Row], target: float) -> Row | None:
    """The narrowest band of a card's table whose heads' accuracy outside it reaches `target`."""
    return next((row for row in sorted(table, key=lambda r: r["share"]) if row["accuracy_outside"] >= target), None)


def band_for_share(table: Sequence[Row], share: float) -> Row | None:
    """The narrowest band of a card's table holding at least `share` of its answers (reads no labels)."""
    return next((row for row in sorted(table, key=lambda r: r["share"]) if row["share"] >= share), None)


def band_from_card(config: JudgeConfig, heads: HeadSet | None) -> tuple[float, float]:
    """The band the card gives the shipped heads: for `target_accuracy` when it is set, else for
    `share` (bench/judge.py: a share chosen on some attack methods carries over to others; an
    accuracy target does not)."""
    path = shipped_path(CARD_FILE)
    card = json.loads(path.read_text()) if path.exists() else {}
    table = card.get("cascade", {}).get("bands")
    if heads is None or not table or card.get("head") != (heads.provenance.get("calibration", {}).get("head") or heads.digest):
        raise JudgeConfigError("the heads in use have no cascade table in the shipped card; set SAFEMON_JUDGE_BAND (e.g. [0.35, 0.65])")
    if config.target_accuracy is not None:
        row = band_for_accuracy(table, config.target_accuracy)
        if row is None:
            best = max(r["accuracy_outside"] for r in table)
            raise JudgeConfigError(
                f"SAFEMON_JUDGE_TARGET_ACCURACY={config.target_accuracy}: no band of the card reaches it (best {best:.3f}); lower it or set SAFEMON_JUDGE_BAND"
            )
    else:
        row = band_for_share(table, config.share) or max(table, key=lambda r: r["share"])
    return float(row["low"]), float(row["high"])


@dataclass(frozen=True)
class Cascade:
    """A judge and the band whose attack scores it decides."""

    judge: Judge
    band: tuple[float, float]

    @classmethod
    def configure(cls, settings: Settings, heads: HeadSet | None, override: dict | None = None) -> Cascade | None:
        """The cascade the settings (under a targets-file `judge` override) ask for, or None without
        a judge. Called before any work starts, so a judge that cannot be used fails at start-up."""
        try:
            config = JudgeConfig.resolve(settings, override)
        except ValueError as exc:
            raise JudgeConfigError(str(exc)) from None
        if config is None:
            return None
        band = config.band if config.band is not None else band_from_card(config, heads)
        return cls(Judge(config, settings), band)

    def run(self, cases: Sequence[Case], allowance: int, *, deadline_s: float | None = None) -> Outcome:
        return run_cascade(cases, self.judge, self.band, allowance, deadline_s=deadline_s)


def audited(key: str, share: float) -> bool:
    """Whether a confident verdict is in the audit share: decided by its key, so a retried batch
    or task audits the same rows."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32 < share


@dataclass(frozen=True)
class Case:
    """One scored exchange as the cascade sees it (texts already redacted)."""

    key: str  # stable id: run and probe, or sample_id
    prompt: str
    response: str
    attack_score: float
    head_verdict: str


@dataclass(frozen=True)
class Outcome:
    """What the cascade did with a batch: one judgement per case, and the calls it dropped."""

    judgements: list[Judgement]
    dropped: int  # uncertain cases left unscored and audits skipped, for want of budget
    calls: int


def run_cascade(cases: Sequence[Case], judge: Judge, band: tuple[float, float], allowance: int, *, deadline_s: float | None = None) -> Outcome:
    """Route each case, ask the judge within `allowance` calls (uncertain first, then audits) and
    `deadline_s`, and say who decided each."""
    low, high = band
    config = judge.config
    uncertain = [i for i, c in enumerate(cases) if low <= c.attack_score < high]
    audits = [i for i, c in enumerate(cases) if not low <= c.attack_score < high and audited(c.key, config.audit_share)]
    # Audits keep a small reserve: a budget that uncertain answers always exhaust would otherwise
    # never measure agreement.
    reserve = min(len(audits), math.ceil(allowance * AUDIT_RESERVE)) if allowance else 0
    asked_uncertain = uncertain[: allowance - reserve]
    asked_audits = audits[: allowance - len(asked_uncertain)]
    asked = asked_uncertain + asked_audits
    answers = judge.rule([(cases[i].prompt, cases[i].response) for i in asked], deadline_s=deadline_s)
    rulings: dict[int, Ruling] = dict(zip(asked, answers, strict=True))
    dropped = len(uncertain) - len(asked_uncertain) + len(audits) - len(asked_audits)
    is_uncertain = set(uncertain)
    judgements = []
    for i, case in enumerate(cases):
        base = Judgement(head_verdict=case.head_verdict)
        if i in rulings:
            ruling = rulings[i]
            role = UNCERTAIN if i in is_uncertain else AUDIT
            base = Judgement(
                head_verdict=case.head_verdict,
                judge_role=role,
                judge_verdict=ruling.verdict.label if ruling.verdict else "",
                judge_categories=ruling.verdict.categories if ruling.verdict else (),
                judge_model=config.model,
                judge_version=config.version,
                judge_latency_ms=ruling.latency_ms,
                decided_by=DecidedBy.HEAD if role == AUDIT else (DecidedBy.JUDGE if ruling.verdict else DecidedBy.UNSCORED),
                unscored_reason=ruling.reason if role == UNCERTAIN else "",
            )
        elif i in is_uncertain:
            base = Judgement(head_verdict=case.head_verdict, judge_role=UNCERTAIN, decided_by=DecidedBy.UNSCORED, unscored_reason=BUDGET_EXHAUSTED)
        judgements.append(base)
    if dropped:
        log.warning("judge.budget_dropped", dropped=dropped, uncertain=len(uncertain), audits=len(audits), allowance=allowance)
    return Outcome(judgements, dropped, len(asked))
