"""The judge as configured, and the calls to it: one request per exchange through the same chat
client the probes use (concurrency, rate limit, timeout, retries with `Retry-After`), each
answer read by the judge's format. A failure or an answer outside the grammar is a `Ruling`
without a verdict, with the reason; it never becomes one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import SecretStr

from pipeline.judge.formats import JUDGE_FORMATS, JudgeVerdict, Unanswered
from pipeline.probes.client import Backoff, ChatClient
from pipeline.probes.targets import TargetConfig

if TYPE_CHECKING:
    from pipeline.settings import Settings

log = structlog.get_logger(__name__)

# Keys a targets file may set for its judge (top level, or per target), as SAFEMON_JUDGE_<KEY> does.
OVERRIDABLE = (
    "endpoint",
    "model",
    "model_version",
    "format",
    "timeout_s",
    "concurrency",
    "rate_limit_per_s",
    "max_retries",
    "budget_per_run",
    "budget_per_hour",
    "band",
    "share",
    "target_accuracy",
    "audit_share",
)


@dataclass(frozen=True)
class JudgeConfig:
    """One judge, resolved: the `SAFEMON_JUDGE_*` settings under the targets file's overrides."""

    endpoint: str
    model: str
    model_version: str
    format: str
    api_key: SecretStr | None
    timeout_s: float
    concurrency: int
    rate_limit_per_s: float
    max_retries: int
    budget_per_run: int
    budget_per_hour: int
    band: tuple[float, float] | None
    share: float
    target_accuracy: float | None
    audit_share: float
    max_tokens: int = 64

    @classmethod
    def resolve(cls, settings: Settings, override: dict[str, Any] | None = None) -> JudgeConfig | None:
        """The judge for a probe run or the stream: None when no endpoint is configured or the
        override sets `enabled: false`."""
        values = {key: getattr(settings, f"judge_{key}") for key in OVERRIDABLE}
        override = dict(override or {})
        if override.pop("enabled", True) is False:
            return None
        values.update({k: v for k, v in override.items() if v is not None})
        if not values["endpoint"]:
            return None
        model = values["model"] or values["model_version"]
        if not model:
            raise ValueError("a judge needs a model: set SAFEMON_JUDGE_MODEL (or the judge's model in the targets file)")
        values["band"] = tuple(values["band"]) if values["band"] is not None else None
        return cls(**{**values, "model": model, "model_version": values["model_version"] or model}, api_key=settings.judge_api_key)

    @property
    def version(self) -> str:
        """Stored with each verdict: the judge's model version and the format's prompt version."""
        return f"{self.model_version}+{JUDGE_FORMATS.get(self.format).version}"

    def as_target(self) -> TargetConfig:
        """The judge as the chat client sees an endpoint."""
        return TargetConfig(
            name="judge",
            endpoint=self.endpoint,
            model=self.model,
            model_version=self.model_version,
            concurrency=self.concurrency,
            rate_limit_per_s=self.rate_limit_per_s,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            max_tokens=self.max_tokens,
            temperature=0.0,
        )


@dataclass(frozen=True)
class Ruling:
    """The judge's answer on one exchange: a verdict, or the reason there is none."""

    verdict: JudgeVerdict | None
    reason: str = ""
    latency_ms: float = 0.0


class HourlyBudget:
    """Judge calls allowed per hour for one process (the stream worker's limit), paced: a bucket
    refilled at `per_hour` / 3600 calls a second that holds `BURST_S` seconds' worth (at least one
    call). A busy worker spreads its calls over the hour instead of spending them all in its first
    minutes and then judging nothing until the hour has passed; and the calls one batch makes stay
    few enough to overlap the embedding of the rest of the batch."""

    BURST_S = 10.0

    def __init__(self, per_hour: int, clock: Any = time.monotonic) -> None:
        self.rate_per_s = per_hour / 3600.0
        self.capacity = max(1.0, per_hour * self.BURST_S / 3600.0)
        self._clock = clock
        self._tokens = self.capacity
        self._at = clock()

    def available(self) -> int:
        """Calls that may be made now."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        return int(self._tokens)

    def spend(self, n: int) -> None:
        self._tokens -= n


class Judge:
    """Asks one judge about exchanges (already redacted), concurrently within its limits."""

    def __init__(self, config: JudgeConfig, settings: Settings, *, backoff: Backoff | None = None) -> None:
        self.config = config
        self.format = JUDGE_FORMATS.get(config.format)()
        self._settings = settings
        self._backoff = backoff
        self.hourly = HourlyBudget(config.budget_per_hour)

    async def rule_many(self, exchanges: Sequence[tuple[str, str]], *, deadline_s: float | None = None) -> list[Ruling]:
        """One ruling per (prompt, response), in order. Calls still running at `deadline_s` are
        cancelled and have no verdict (the stream worker must poll Kafka again in time)."""
        if not exchanges:
            return []
        target = self.config.as_target()
        async with ChatClient(target, self._settings, backoff=self._backoff, api_key=self.config.api_key) as client:

            async def one(index: int, prompt: str, response: str) -> Ruling:
                reply = await client.chat(self.format.messages(prompt, response), label=f"judge:{index}")
                if reply.error is not None:
                    return Ruling(None, f"judge error: {reply.error}", reply.latency_ms)
                try:
                    return Ruling(self.format.parse(reply.text or ""), "", reply.latency_ms)
                except Unanswered as exc:
                    return Ruling(None, exc.reason, reply.latency_ms)

            tasks = [asyncio.ensure_future(one(i, p, r)) for i, (p, r) in enumerate(exchanges)]
            done, late = await asyncio.wait(tasks, timeout=deadline_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
            rulings = [t.result() if t in done else Ruling(None, f"judge deadline exceeded: no answer within {deadline_s:g} s for the batch") for t in tasks]
        failed = sum(r.verdict is None for r in rulings)
        log.info("judge.ruled", judge=self.config.version, n=len(rulings), failed=failed, late=len(late))
        return rulings

    def rule(self, exchanges: Sequence[tuple[str, str]], *, deadline_s: float | None = None) -> list[Ruling]:
        """`rule_many` for callers without an event loop (the stream worker, Airflow tasks)."""
        return asyncio.run(self.rule_many(exchanges, deadline_s=deadline_s))
