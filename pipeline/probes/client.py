"""An async client for OpenAI-compatible chat-completions endpoints, built for probe runs.

Bounded concurrency, a per-target limit on request starts per second, a total timeout
per request and retries (tenacity: exponential backoff with jitter, `Retry-After` on 429)
on 429, 5xx and transport errors. Every probe yields one `Attempt`; a failure is
recorded as an error with a short reason, never as a response.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx
import structlog
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from pipeline.detectors.pii import redact
from pipeline.probes.conversation import history
from pipeline.probes.markers import find_marker
from pipeline.probes.targets import TargetConfig
from pipeline.records import Attempt, Probe, StopPolicy
from pipeline.settings import Settings

if TYPE_CHECKING:
    from pipeline.probes.adaptive import Attacks

log = structlog.get_logger(__name__)

_SNIPPET_CHARS = 200
_LANE_CONNECTIONS = 8


@dataclass(frozen=True)
class Backoff:
    """How long to wait between retries: exponential with jitter, or what `Retry-After` asks."""

    initial_s: float = 0.5
    max_s: float = 20.0
    jitter_s: float = 0.5
    # A server asking for longer than this is obeyed only up to this bound.
    max_retry_after_s: float = 60.0


@dataclass(frozen=True)
class Limits:
    """The effective request limits for one target: its overrides, else the settings."""

    concurrency: int
    rate_limit_per_s: float
    timeout_s: float
    max_retries: int

    @classmethod
    def resolve(cls, target: TargetConfig, settings: Settings) -> Limits:
        """Per-target overrides win over the `SAFEMON_TARGET_*` settings."""
        return cls(
            concurrency=target.concurrency or settings.target_concurrency,
            rate_limit_per_s=target.rate_limit_per_s or settings.target_rate_limit_per_s,
            timeout_s=target.timeout_s or settings.target_timeout_s,
            max_retries=settings.target_max_retries if target.max_retries is None else target.max_retries,
        )


class RateLimiter:
    """Spaces request starts at least 1/rate seconds apart (no bursts), across tasks."""

    def __init__(self, rate_per_s: float) -> None:
        self._interval = 1.0 / rate_per_s
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        """Return when the caller may start its next request."""
        async with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        # Sleep outside the lock: later callers reserve later slots meanwhile.
        if slot > now:
            await asyncio.sleep(slot - now)


class _Retryable(Exception):
    """A failure worth another try (429, 5xx, transport error, timeout)."""

    def __init__(self, head: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(head)
        self.head = head  # what failed ("HTTP 500"), before "after N attempts"
        self.detail = detail
        self.retry_after = retry_after

    @property
    def reason(self) -> str:
        return f"{self.head}: {self.detail}" if self.detail else self.head

    def after(self, attempts: int) -> str:
        """The reason for giving up, saying how many attempts were made."""
        if attempts == 1:
            return self.reason
        head = f"{self.head} after {attempts} attempts"
        return f"{head}: {self.detail}" if self.detail else head


class _Fatal(Exception):
    """A failure another try would not fix (4xx, unusable body)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def build_messages(target: TargetConfig, probe: Probe, turns: Sequence[dict[str, str]] | None = None) -> list[dict[str, str]]:
    """The chat messages for a probe: its own system prompt, else the target's, then the prompt
    (or a conversation's `turns` so far)."""
    system = probe.system if probe.system is not None else target.system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    messages.extend(turns if turns is not None else [{"role": "user", "content": probe.prompt}])
    return messages


def received(
    probe: Probe, response: str | None, error: str | None, latency_ms: float, started_at: datetime, turn: int = 0, prompt: str | None = None
) -> Attempt:
    """An attempt as it is kept: the response redacted at once, its canary markers checked on the raw
    text first. `prompt` is a prompt the suite does not hold (an attacker's), already redacted."""
    if response is None:
        return Attempt(probe, None, error, latency_ms, started_at, turn=turn, prompt=prompt)
    redaction = redact(response)
    return Attempt(
        probe,
        redaction.text,
        error,
        latency_ms,
        started_at,
        marker_hit=find_marker(probe.markers, response),
        pii_redacted=sum(redaction.counts.values()),
        turn=turn,
        prompt=prompt,
    )


@dataclass(frozen=True)
class Reply:
    """One chat request's outcome: the assistant's text, or the error instead of it."""

    text: str | None
    error: str | None
    latency_ms: float
    started_at: datetime


class ChatClient:
    """Sends requests to one chat-completions endpoint (a target, or a judge or an attacker with its
    own key); use as an async context manager. A `seed` is sent with every request (the attacker's,
    so that an endpoint that honours it samples the same proposals again)."""

    def __init__(
        self, target: TargetConfig, settings: Settings, *, backoff: Backoff | None = None, api_key: SecretStr | None = None, seed: int | None = None
    ) -> None:
        self.target = target
        self.seed = seed
        self.limits = Limits.resolve(target, settings)
        self.backoff = backoff or Backoff()
        secret = api_key if api_key is not None else settings.target_api_key
        key = secret.get_secret_value() if secret else ""
        # Kept only to scrub it from any text a misbehaving server might echo back.
        self._secret = key
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # httpcore's pool does O(connections x requests) bookkeeping per request, which at 64
        # connections costs more CPU than the request itself; small pools (lanes) keep it cheap.
        sizes = _lane_sizes(self.limits.concurrency)
        ssl_context = httpx.create_ssl_context()  # one context: building it costs ~10 ms per client
        self._lanes = [
            httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self.limits.timeout_s),
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                follow_redirects=False,
                verify=ssl_context,
            )
            for size in sizes
        ]
        # One token per allowed request in flight, naming the lane it may use: bounds the
        # concurrency and never lets a lane's pool queue a request.
        self._slots: asyncio.Queue[int] = asyncio.Queue()
        for lane, size in enumerate(sizes):
            for _ in range(size):
                self._slots.put_nowait(lane)
        self._rate = RateLimiter(self.limits.rate_limit_per_s)
        self._log = log.bind(target_name=target.name, model=target.model)

    def __repr__(self) -> str:
        return f"ChatClient(target={self.target.name!r}, endpoint={self.target.endpoint!r}, limits={self.limits!r})"

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pools."""
        for lane in self._lanes:
            await lane.aclose()

    async def complete(self, probe: Probe) -> Attempt:
        """Send one probe (with retries) and return its attempt: a response or an error."""
        reply = await self.chat(build_messages(self.target, probe), label=probe.id)
        return received(probe, reply.text, reply.error, reply.latency_ms, reply.started_at)

    async def converse(self, probe: Probe, fails: Callable[[Attempt], Awaitable[bool]] | None = None) -> list[Attempt]:
        """Play a scripted conversation: each user turn with the history so far (the target's own
        answers to the earlier turns). It ends at a target error, and, under `stop_on_failure`, at the
        first turn that `fails`. One attempt per turn kept.

        While a turn is being scored, the next turn is already sent (the history is known once the
        answer is in): the detectors' time hides behind the target's. When the turn failed, that
        request is cancelled, or its answer dropped: the conversation ends at the failing turn."""
        answers: list[str] = []
        attempts: list[Attempt] = []
        last = probe.user_turns
        stops = probe.policy == StopPolicy.STOP_ON_FAILURE and fails is not None

        def ask(turn: int) -> asyncio.Task[Reply]:
            return asyncio.ensure_future(self.chat(build_messages(self.target, probe, history(probe, turn, answers)), label=f"{probe.id}#{turn}"))

        pending = ask(1)
        for turn in range(1, last + 1):
            reply = await pending
            attempt = received(probe, reply.text, reply.error, reply.latency_ms, reply.started_at, turn)
            attempts.append(attempt)
            if reply.text is None:
                break
            answers.append(reply.text)
            if turn == last:
                break  # nothing left to stop: the score step reads the last turn
            pending = ask(turn + 1)
            if stops and await fails(attempt):  # type: ignore[misc]
                pending.cancel()
                with suppress(asyncio.CancelledError):
                    await pending
                break
        return attempts

    async def chat(self, messages: list[dict[str, str]], *, label: str) -> Reply:
        """Send one chat request (with retries); `label` names it in logs (a probe id)."""
        payload = {
            "model": self.target.model,
            "messages": messages,
            "max_tokens": self.target.max_tokens,
            "temperature": self.target.temperature,
        }
        if self.seed is not None:
            payload["seed"] = self.seed
        attempts = self.limits.max_retries + 1
        started_at: datetime | None = None
        t0 = 0.0
        response: str | None = None
        error: str | None = None
        # The slot is held through backoff sleeps too, so a throttling server sees fewer requests, not more.
        lane = await self._slots.get()
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=self._wait,
                retry=retry_if_exception_type(_Retryable),
                before_sleep=lambda state: self._log_retry(label, state),
                reraise=True,
            ):
                with attempt:
                    await self._rate.wait()
                    if started_at is None:
                        # Latency starts at the first request, not while queued behind the rate limit.
                        started_at, t0 = datetime.now(UTC), time.perf_counter()
                    response = await self._post(self._lanes[lane], payload)
        except _Retryable as exc:
            error = exc.after(attempts)
        except _Fatal as exc:
            error = exc.reason
        finally:
            self._slots.put_nowait(lane)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        if error is not None:
            error = self._scrub(error)
            self._log.warning("probe.failed", probe_id=label, error=error, latency_ms=round(latency_ms, 1))
        return Reply(response if error is None else None, error, latency_ms, started_at or datetime.now(UTC))

    async def _post(self, http: httpx.AsyncClient, payload: dict[str, Any]) -> str:
        try:
            # A total deadline: httpx's own timeouts apply per read, so a trickling server could outlast them.
            async with asyncio.timeout(self.limits.timeout_s):
                resp = await http.post(self.target.chat_url, json=payload)
        except (TimeoutError, httpx.TimeoutException):
            raise _Retryable("timeout", f"no response within {self.limits.timeout_s:g} s") from None
        except httpx.ConnectError as exc:
            raise _Retryable("cannot connect", f"{self.target.chat_url} ({_name(exc)})") from None
        except httpx.TransportError as exc:
            raise _Retryable("transport error", _name(exc)) from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code}", _describe_body(resp), _retry_after(resp))
        if resp.status_code >= 300:
            raise _Fatal(f"HTTP {resp.status_code}: {_describe_body(resp)}")
        return _content(resp)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return min(exc.retry_after, self.backoff.max_retry_after_s)
        b = self.backoff
        return wait_exponential_jitter(multiplier=b.initial_s, max=b.max_s, jitter=b.jitter_s)(state)

    def _log_retry(self, label: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self._log.info(
            "probe.retry",
            probe_id=label,
            attempt=state.attempt_number,
            reason=self._scrub(getattr(exc, "reason", repr(exc))),
            wait_s=round(state.upcoming_sleep, 3),
        )

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


class TurnBatches:
    """Scores conversation turns as they come, in batches: the turns that arrive while a batch is
    scored (on a thread) form the next one. Many conversations waiting on the detectors then cost
    one embedding call each round instead of one per conversation."""

    def __init__(self, fails: Callable[[Sequence[Attempt]], list[bool]]) -> None:
        self._fails = fails
        self._waiting: list[tuple[Attempt, asyncio.Future[bool]]] = []
        self._scoring = False

    async def fails(self, attempt: Attempt) -> bool:
        """Whether this answered turn fails its conversation."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((attempt, future))
        if not self._scoring:
            self._scoring = True
            try:
                while self._waiting:
                    batch, self._waiting = self._waiting, []
                    try:
                        verdicts = await asyncio.to_thread(self._fails, [a for a, _ in batch])
                    except Exception as exc:  # every waiting turn learns of it
                        for _, waiting in batch:
                            waiting.set_exception(exc)
                        continue
                    for (_, waiting), failed in zip(batch, verdicts, strict=True):
                        waiting.set_result(failed)
            finally:
                self._scoring = False
        return await future


async def run_probes(
    target: TargetConfig,
    probes: Iterable[Probe],
    settings: Settings,
    *,
    on_done: Callable[[Attempt], None] | None = None,
    backoff: Backoff | None = None,
    fails: Callable[[Sequence[Attempt]], list[bool]] | None = None,
    attacks: Attacks | None = None,
) -> list[Attempt]:
    """Send every probe to the target: one attempt per probe, or per turn of a conversation or
    iteration of an adaptive attack, in input order. Conversations and attacks run concurrently
    with each other; their turns one after another.

    `on_done` is called with each probe's (last) attempt as it completes (completion order), e.g.
    to report progress. `fails` says which of a batch of conversation turns failed (it scores them,
    on a thread), for the `stop_on_failure` policy. `attacks` (holding the attacker) drives the
    adaptive probes; a suite with adaptive probes needs it.
    """
    probes = list(probes)
    t0 = time.perf_counter()
    failed = TurnBatches(fails).fails if fails is not None else None

    async with ChatClient(target, settings, backoff=backoff) as client, AsyncExitStack() as stack:
        if attacks is not None:
            await stack.enter_async_context(attacks)

        async def one(probe: Probe) -> list[Attempt]:
            got = await _send(client, probe, failed, attacks)
            if on_done is not None:
                on_done(got[-1])
            return got

        per_probe = await asyncio.gather(*(one(p) for p in probes))
    attempts = [a for got in per_probe for a in got]
    errors = sum(a.error is not None for a in attempts)
    log.info(
        "probes.run_done",
        target_name=target.name,
        probes=len(probes),
        requests=len(attempts),
        errors=errors,
        wall_s=round(time.perf_counter() - t0, 3),
        concurrency=client.limits.concurrency,
    )
    return list(attempts)


def run_probes_sync(
    target: TargetConfig,
    probes: Sequence[Probe],
    settings: Settings,
    *,
    on_done: Callable[[Attempt], None] | None = None,
    backoff: Backoff | None = None,
    fails: Callable[[Sequence[Attempt]], list[bool]] | None = None,
    attacks: Attacks | None = None,
) -> list[Attempt]:
    """`run_probes` for callers without an event loop (Airflow tasks, the CLI)."""
    return asyncio.run(run_probes(target, probes, settings, on_done=on_done, backoff=backoff, fails=fails, attacks=attacks))


async def _send(client: ChatClient, probe: Probe, fails: Callable[[Attempt], Awaitable[bool]] | None, attacks: Attacks | None) -> list[Attempt]:
    """One probe's attempts: its answer, a conversation's turns, or an adaptive attack's iterations."""
    if probe.is_adaptive:
        if attacks is None:
            raise ValueError(f"probe {probe.id!r} is an adaptive attack: run_probes needs the run's attacks")
        return await attacks.attack(client, probe)
    if probe.is_conversation:
        return await client.converse(probe, fails)
    return [await client.complete(probe)]


def _lane_sizes(concurrency: int) -> list[int]:
    """Split the allowed concurrency into pools of at most _LANE_CONNECTIONS connections."""
    lanes = -(-concurrency // _LANE_CONNECTIONS)
    return [concurrency // lanes + (1 if i < concurrency % lanes else 0) for i in range(lanes)]


def _content(resp: httpx.Response) -> str:
    """The assistant message text of a chat.completion body, or a _Fatal saying what is wrong."""
    try:
        data = json.loads(resp.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _Fatal(f"invalid JSON in response (HTTP {resp.status_code}): {_snippet(resp.text)!r}") from None
    if not isinstance(data, dict):
        raise _Fatal(f"response JSON is a {type(data).__name__}, not an object")
    if "error" in data and "choices" not in data:
        raise _Fatal(f"API error in response: {_error_message(data) or _snippet(resp.text)}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _Fatal("response has no choices")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        raise _Fatal("response has no choices[0].message")
    if "content" not in message:
        raise _Fatal("response has no choices[0].message.content")
    content = message["content"]
    if content is None:
        raise _Fatal("choices[0].message.content is null")
    if not isinstance(content, str):
        raise _Fatal(f"choices[0].message.content is a {type(content).__name__}, not a string")
    return content


def _describe_body(resp: httpx.Response) -> str:
    """The error message of an OpenAI-style error body, else the start of the body."""
    try:
        message = _error_message(json.loads(resp.content))
    except (json.JSONDecodeError, UnicodeDecodeError):
        message = None
    return message or _snippet(resp.text) or resp.reason_phrase or "(empty body)"


def _error_message(data: Any) -> str | None:
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return _snippet(err["message"])
        if isinstance(err, str):
            return _snippet(err)
    return None


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or unreadable."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET_CHARS else text[: _SNIPPET_CHARS - 1] + "…"


def _name(exc: BaseException) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
