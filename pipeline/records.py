"""The few record types that cross module boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.detectors.scorer import Detection


def utc_now() -> datetime:
    """Now, in UTC, at the store's precision (DateTime64(3)) so values round-trip exactly."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Expect(StrEnum):
    REFUSE = "refuse"
    COMPLY = "comply"


class TurnExpect(StrEnum):
    """What a target should do with one user turn of a scripted conversation."""

    REFUSE = "refuse"
    COMPLY = "comply"
    ANY = "any"  # either; only harmful help is a failure


class StopPolicy(StrEnum):
    """When a scripted conversation stops: at its first failing turn, or after every turn."""

    STOP_ON_FAILURE = "stop_on_failure"
    PLAY_ALL = "play_all"


class Verdict(StrEnum):
    ATTACK_SUCCESS = "attack_success"
    REFUSED = "refused"
    OVER_REFUSAL = "over_refusal"
    COMPLIED_OK = "complied_ok"
    ERROR = "error"
    # The heads were unsure and the judge gave no verdict (a failure, or an exhausted budget):
    # not a verdict, so left out of every rate's denominator, like an error.
    UNSCORED = "unscored"


@dataclass(frozen=True)
class ScriptTurn:
    """One turn of a scripted conversation: a user turn sent to the target, or an assistant turn
    written into the history (never sent for an answer)."""

    role: str  # user | assistant
    content: str
    expect: TurnExpect = TurnExpect.ANY


class AttackMethod(StrEnum):
    """How an attacker model drives an adaptive probe: PAIR refines one prompt per iteration
    (each sent on its own); Crescendo writes each next turn of one escalating conversation."""

    PAIR = "pair"
    CRESCENDO = "crescendo"


@dataclass(frozen=True)
class AttackSpec:
    """An adaptive probe's attack: the method, the goal the attacker pursues (a request a safe
    model refuses), and the most iterations (PAIR) or turns (Crescendo) it may take."""

    method: AttackMethod
    goal: str
    max_turns: int = 5


@dataclass(frozen=True)
class Probe:
    """One prompt sent to a target, with what a safe model should do with it; or a scripted
    conversation (`turns`), whose user turns are sent one by one with the history so far; or an
    adaptive attack (`attack`), whose prompts an attacker model writes during the run."""

    id: str
    category: str
    prompt: str  # a conversation's last user turn
    expect: Expect
    tags: tuple[str, ...] = ()
    system: str | None = None
    # Canary strings whose presence in a response proves the attack worked
    # (leaked system-prompt secrets, injected instructions being followed).
    markers: tuple[str, ...] = ()
    turns: tuple[ScriptTurn, ...] = ()
    policy: StopPolicy = StopPolicy.STOP_ON_FAILURE
    attack: AttackSpec | None = None  # set for an adaptive probe, whose `prompt` is the goal

    @property
    def is_conversation(self) -> bool:
        return bool(self.turns)

    @property
    def is_adaptive(self) -> bool:
        return self.attack is not None

    @property
    def user_turns(self) -> int:
        """User turns sent for an answer: those no scripted assistant turn answers (1 for a prompt)."""
        turns = self.turns
        return sum(t.role == "user" and (i + 1 == len(turns) or turns[i + 1].role != "assistant") for i, t in enumerate(turns)) or 1


@dataclass(frozen=True)
class Suite:
    """A named, versioned set of probes."""

    name: str
    version: str
    description: str
    probes: tuple[Probe, ...]


@dataclass(frozen=True)
class Attempt:
    """A probe sent to a target: the response (PII redacted on receipt), or the error instead of one.

    `marker_hit` was decided on the raw response, before redaction: a canary may look like
    a secret that redaction replaces. `pii_redacted` counts what redaction replaced.
    """

    probe: Probe
    response: str | None
    error: str | None
    latency_ms: float
    started_at: datetime
    marker_hit: bool = False
    pii_redacted: int = 0
    turn: int = 0  # a conversation's user turn (1, 2, ...); 0 for a single prompt
    # The prompt actually sent (redacted) when the suite does not hold it: an adaptive probe's,
    # written by the attacker. None for suite prompts and scripted turns.
    prompt: str | None = None
    # What the judge said of this answer while an adaptive attack ran (it decided whether the
    # attack went on); None when the judge was not asked.
    judgement: Judgement | None = None


@dataclass(frozen=True)
class CategoryStat:
    """Attack success (or over-refusal) count for one category in one run, with its interval."""

    category: str
    n: int
    successes: int
    rate: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Comparison:
    """One category's baseline versus current rate, with the test that compared them."""

    category: str
    baseline: CategoryStat
    current: CategoryStat
    p_value: float
    p_adjusted: float
    effect: float
    regressed: bool


class AlertKind(StrEnum):
    REGRESSION = "regression"
    RECOVERY = "recovery"
    DATA_QUALITY = "data_quality"
    DRIFT = "drift"


class Source(StrEnum):
    """Where a finding comes from: a probe run, a window of production traffic, a drift check, or the
    head-judge agreement audit."""

    PROBE = "probe"
    STREAM = "stream"
    DRIFT = "drift"
    JUDGE = "judge"


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


class AlertStatus(StrEnum):
    """Where a stored alert stands: waiting to be sent, sent to Slack, logged (no Slack configured),
    or held back (the same condition within its cooldown)."""

    PENDING = "pending"
    SENT = "sent"
    LOGGED = "logged"
    SUPPRESSED = "suppressed"


class RunStatus(StrEnum):
    """A probe run's progress: probes sent (Airflow's `run` task), results stored, evaluated."""

    RUNNING = "running"
    SCORED = "scored"
    EVALUATED = "evaluated"


class Outcome(StrEnum):
    """What evaluation concluded about a probe run."""

    PASSED = "passed"
    REGRESSED = "regressed"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class Sample:
    """An example response shown in an alert (already redacted)."""

    probe_id: str
    category: str
    prompt: str
    response: str


@dataclass(frozen=True)
class Alert:
    """A finding worth telling the on-call team about; stored first, then sent."""

    alert_id: str
    fingerprint: str  # stable across runs for the same condition: cooldown and threading key
    kind: AlertKind
    severity: Severity
    source: Source
    target: str
    suite: str  # the probe suite; "" for stream and drift alerts
    model_version: str
    run_id: str
    title: str
    summary: str
    created_at: datetime
    baseline_model_version: str = ""
    baseline_run_id: str = ""
    categories: tuple[str, ...] = ()
    comparisons: tuple[Comparison, ...] = ()
    samples: tuple[Sample, ...] = ()
    sql: str = ""
    link: str | None = None

    @property
    def scope(self) -> str:
        """How messages name what the alert is about: the probe suite, or the source."""
        return self.suite or str(self.source)


@dataclass(frozen=True)
class ProbeRun:
    """One execution of a suite against a target."""

    run_id: str
    target: str
    suite: str
    suite_version: str
    model_version: str
    started_at: datetime
    finished_at: datetime
    n_probes: int
    n_errors: int
    n_unscored: int = 0  # results the judge cascade left unscored
    n_judged: int = 0  # results a judge decided
    n_judge_dropped: int = 0  # judge calls the budget dropped (uncertain ones are also unscored)
    n_attacks_cut: int = 0  # adaptive probes the attacker budget stopped before success or their last turn
    attacker_version: str = ""  # the attacker's model version and prompt files ("" without adaptive probes)
    status: RunStatus = RunStatus.SCORED
    outcome: Outcome | str = ""  # empty until evaluated
    healthy: bool = True
    baseline_run_id: str = ""

    @property
    def error_rate(self) -> float:
        return self.n_errors / self.n_probes if self.n_probes else 0.0

    @property
    def unscored_rate(self) -> float:
        """Unscored results per answered probe."""
        answered = self.n_probes - self.n_errors
        return self.n_unscored / answered if answered else 0.0


class DecidedBy(StrEnum):
    """Who decided a verdict: the detector heads, the judge, or nobody (see `Verdict.UNSCORED`)."""

    HEAD = "head"
    JUDGE = "judge"
    UNSCORED = "unscored"


@dataclass(frozen=True)
class Judgement:
    """What the judge cascade did with one scored exchange; each field is a stored column of
    `probe_results` and `sample_scores` (migration 0014).

    `judge_role` is "" when the judge was not asked, "uncertain" when the heads' attack score fell
    inside the band (the judge decides), "audit" when a confident verdict was sampled for the
    agreement audit (the head decides)."""

    head_verdict: str = ""
    judge_role: str = ""
    judge_verdict: str = ""  # "", "safe" or "unsafe"
    judge_categories: tuple[str, ...] = ()
    judge_model: str = ""
    judge_version: str = ""
    judge_latency_ms: float = 0.0
    decided_by: DecidedBy = DecidedBy.HEAD
    unscored_reason: str = ""

    def columns(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


JUDGEMENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Judgement))


@dataclass(frozen=True)
class TurnResult:
    """One answered (or failed) user turn of a scripted conversation, scored in its context; the
    conversation's `probe_turns` rows."""

    turn: int  # 1, 2, ...
    expect: str  # the turn's: refuse | comply | any
    prompt: str  # the turn's user text, redacted
    response: str
    error: str
    latency_ms: float
    marker_hit: bool
    verdict: Verdict
    pii_redacted: int
    risk: float  # running risk after this turn: the highest attack score so far
    detection: Detection
    judgement: Judgement = field(default_factory=Judgement)  # an adaptive attack's turn the judge was asked about

    def columns(self) -> dict[str, Any]:
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("detection", "judgement")}
        return {**own, **self.detection.columns(), **self.judgement.columns()}


@dataclass(frozen=True)
class ProbeResult:
    """A scored attempt: what was sent (redacted), what came back (redacted), what the detectors
    found (an empty `Detection` for an error) and the verdict. For a scripted conversation: its
    verdict, its first failing turn, and the prompt, answer and detection of that turn (else of
    its last turn); the turns themselves are in `turns`."""

    run_id: str
    probe_id: str
    category: str
    expect: str
    tags: tuple[str, ...]
    prompt: str
    response: str
    error: str
    latency_ms: float
    marker_hit: bool
    verdict: Verdict
    pii_redacted: int
    detection: Detection
    judgement: Judgement = field(default_factory=Judgement)
    n_turns: int = 1  # user turns played
    first_failure_turn: int = 0  # 0: none (or not a conversation)
    risk: float = 0.0  # the highest attack score over the turns played
    turns: tuple[TurnResult, ...] = ()

    def columns(self) -> dict[str, Any]:
        """The stored columns: the probe's, the detection's, then the judgement's."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("detection", "judgement", "turns")}
        return {**own, **self.detection.columns(), **self.judgement.columns()}


@dataclass(frozen=True)
class Turn:
    """One message of a conversation."""

    role: str  # system | user | assistant | tool
    content: str


@dataclass(frozen=True)
class ConversationSample:
    """A sampled production conversation: the `conversation_sample.v1` Kafka message."""

    sample_id: str  # the idempotency key
    occurred_at: datetime
    target: str
    model_version: str
    conversation_id: str
    turns: tuple[Turn, ...]
    metadata: dict[str, str] = field(default_factory=dict)
