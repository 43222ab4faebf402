"""A recorded judge: an OpenAI-compatible chat server that gives recorded verdicts, over real HTTP.

It stands in for the judge (a guard model, or a chat model with the rubric) in tests, demos and
benchmarks, as `probes/replay.py` stands in for the model under test. A request is read in the
format it was asked in: a system message that is the packaged rubric means `rubric` (the exchange
is read back from its <request>/<response> tags), anything else `llama_guard` (the last user
message is the prompt, the last assistant message the response). The verdict comes from a
recording keyed by the normalised (prompt, response) pair, and is answered in the same format:
`safe` / `unsafe\\nS1,S10`, or `verdict: ...\\ncategories: ...`.

A recording is JSONL, one `{"prompt", "response", "unsafe", "categories"}` per line
(`load_judge_recording`), or JailbreakBench's flat artifacts file, whose `jailbroken_llama_guard1`
column is Llama Guard 1's real verdict on each exchange (`jbb_recording`).

Faults are queued and each one spoils the next request: 429 with Retry-After, 5xx, a delay past
the client's timeout, an answer outside the grammar, a refusal by the judge, a body that is not
JSON. Tests queue them while the server runs and read its counts to check retries and budgets.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import structlog

from pipeline.judge.formats import LLAMA_GUARD_CODES, JudgeVerdict, Rubric

# The JailbreakBench suite importer's mapping, so a JBB probe and the judge's verdict on it agree.
from pipeline.lab.importers import jbb_category

# The replay endpoint's handler already speaks the OpenAI wire details (body limits, keep-alive,
# error bodies); the stand-in only replaces what a request means.
from pipeline.probes.replay import ChatHandler, LoopbackServer, RecordingError, normalise, parse_recorded
from pipeline.signals import stop_on_signals
from pipeline.taxonomy import CATEGORIES

log = structlog.get_logger(__name__)

Unknown = Literal["error", "safe", "unsafe"]
FaultKind = Literal["rate_limit", "server_error", "timeout", "malformed", "refusal", "invalid_json"]
REFUSAL = "I'm sorry, I can't help with that."
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")


# safemon category -> the first Llama Guard 3 S-code that means it. Only S-codes: a guard that
# answers in MLCommons codes is what the stand-in plays; O-codes are Llama Guard 1's. Categories
# with no S-code (harassment, the attack surfaces) have no code to answer with.
def _first_s_codes() -> dict[str, str]:
    codes: dict[str, str] = {}
    for code, categories in LLAMA_GUARD_CODES.items():
        for category in categories:
            if code.startswith("S"):
                codes.setdefault(category, code)
    return codes


_S_CODES = _first_s_codes()

_RUBRIC_EXCHANGE = "<request>\n{prompt}\n</request>\n<response>\n{response}\n</response>"
_REQUEST_OPEN, _RESPONSE_CLOSE = "<request>\n", "\n</response>"
_BETWEEN = "\n</request>\n<response>\n"


@dataclass(frozen=True)
class JudgeRecord:
    """One recorded verdict: whether the response to a prompt is unsafe, and in which categories."""

    prompt: str
    response: str
    unsafe: bool
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [c for c in self.categories if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown category name(s) {', '.join(map(repr, unknown))}; valid: {', '.join(sorted(CATEGORIES))}")
        if not self.unsafe and self.categories:
            raise ValueError("a safe verdict has no categories")
        # One spelling per verdict, so equal verdicts compare equal and answer identically.
        object.__setattr__(self, "categories", tuple(sorted(set(self.categories))))

    @property
    def key(self) -> tuple[str, str]:
        """The pair a request is matched on."""
        return normalise(self.prompt), normalise(self.response)

    @property
    def verdict(self) -> JudgeVerdict:
        """What the judge answers for this pair."""
        return JudgeVerdict(self.unsafe, self.categories)


@dataclass(frozen=True)
class Fault:
    """What goes wrong with one request; build one with the class methods."""

    kind: FaultKind
    status: int | None = None  # of the HTTP error it answers with, if it is one
    retry_after_s: float | None = None
    delay_s: float = 0.0
    text: str = ""

    @classmethod
    def rate_limit(cls, retry_after_s: float = 1.0) -> Fault:
        """HTTP 429 with a Retry-After header of this many seconds."""
        return cls("rate_limit", status=429, retry_after_s=retry_after_s)

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        """HTTP 500, 503 or another 5xx, with an OpenAI-style error body."""
        if not 500 <= status <= 599:
            raise ValueError(f"a server error is a 5xx status, not {status}")
        return cls("server_error", status=HTTPStatus(status))  # a status http.server cannot name raises here

    @classmethod
    def timeout(cls, delay_s: float = 5.0) -> Fault:
        """Answer only after `delay_s` seconds: longer than the client's timeout, it times out."""
        return cls("timeout", delay_s=delay_s)

    @classmethod
    def malformed(cls, text: str = "maybe") -> Fault:
        """A well-formed completion whose text is outside the judge's grammar."""
        return cls("malformed", text=text)

    @classmethod
    def refusal(cls, text: str = REFUSAL) -> Fault:
        """A completion in which the judge refuses to judge."""
        return cls("refusal", text=text)

    @classmethod
    def invalid_json(cls) -> Fault:
        """HTTP 200 with a body that is not JSON (cut short)."""
        return cls("invalid_json")


@dataclass(frozen=True)
class Counts:
    """Requests to the chat endpoint received, and completions (HTTP 200, chat.completion) answered.

    A request held past the client's timeout is still answered, and counted, when its delay ends."""

    requests: int = 0
    completions: int = 0


def llama_guard_answer(verdict: JudgeVerdict) -> str:
    """What Llama Guard 3 would answer: `safe`, or `unsafe` and its S-codes (none if no category has one)."""
    if not verdict.unsafe:
        return "safe"
    codes = sorted({_S_CODES[c] for c in verdict.categories if c in _S_CODES}, key=lambda code: int(code[1:]))
    return "unsafe\n" + ",".join(codes) if codes else "unsafe"


def rubric_answer(verdict: JudgeVerdict) -> str:
    """The rubric's two lines; raises ValueError for an unsafe verdict without a category, which they cannot state."""
    if not verdict.unsafe:
        return "verdict: safe\ncategories: none"
    if not verdict.categories:
        raise ValueError("the recorded verdict is unsafe without a category, and the rubric's answer must name one")
    return f"verdict: unsafe\ncategories: {', '.join(verdict.categories)}"


def read_exchange(messages: list[dict[str, Any]], rubric_system: str) -> tuple[str, str, str]:
    """(format, prompt, response) of a judge request; raises ValueError saying what is missing.

    `rubric_system` is the normalised rubric system prompt."""
    system = next((m.get("content") for m in messages if m.get("role") == "system"), None)
    if isinstance(system, str) and normalise(system) == rubric_system:
        user = _last(messages, "user")
        if user is None or not (user.startswith(_REQUEST_OPEN) and user.endswith(_RESPONSE_CLOSE) and _BETWEEN in user):
            raise ValueError("a rubric request needs a user message of the form " + repr(_RUBRIC_EXCHANGE))
        # The response is last, so the first separator ends the prompt unless the prompt contains it itself.
        prompt, response = user[len(_REQUEST_OPEN) : -len(_RESPONSE_CLOSE)].split(_BETWEEN, 1)
        return "rubric", prompt, response
    prompt, response = _last(messages, "user"), _last(messages, "assistant")
    if prompt is None or response is None:
        raise ValueError("a llama_guard request needs a user message (the prompt) and an assistant message (the response)")
    return "llama_guard", prompt, response


def _last(messages: list[dict[str, Any]], role: str) -> str | None:
    content = next((m.get("content") for m in reversed(messages) if m.get("role") == role), None)
    return content if isinstance(content, str) else None


_ANSWERS: dict[str, Callable[[JudgeVerdict], str]] = {"llama_guard": llama_guard_answer, "rubric": rubric_answer}


def _jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(`file:line`, parsed JSON) for each non-blank line; RecordingError naming the line otherwise."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise RecordingError(f"{path}: recording not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path}: cannot read recording: {exc}") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordingError(f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None


def load_judge_recording(path: str | Path) -> list[JudgeRecord]:
    """Read a JSONL of `{"prompt", "response", "unsafe", "categories"}` (categories optional when safe).

    Two lines that give one pair different verdicts are an error: the stand-in could not say which."""
    records: list[JudgeRecord] = []
    seen: dict[tuple[str, str], tuple[str, JudgeRecord]] = {}
    for where, item in _jsonl(path):
        record = _record(item, where)
        earlier = seen.get(record.key)
        if earlier is not None and earlier[1].verdict != record.verdict:
            raise RecordingError(f"{where}: the same prompt and response have another verdict at {earlier[0]}")
        seen.setdefault(record.key, (where, record))
        records.append(record)
    return records


def _record(item: Any, where: str) -> JudgeRecord:
    if not isinstance(item, dict):
        raise RecordingError(f"{where}: expected a JSON object, got {type(item).__name__}")
    unknown = sorted(set(item) - {"prompt", "response", "unsafe", "categories"})
    if unknown:
        raise RecordingError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    # The exchange's own checks (strings, a prompt that is not blank) are the replay recording's.
    exchange = parse_recorded({k: item[k] for k in ("prompt", "response") if k in item}, where)
    if not isinstance(item.get("unsafe"), bool):
        raise RecordingError(f"{where}: key 'unsafe' must be true or false" + ("" if "unsafe" in item else " (missing)"))
    categories = item.get("categories", [])
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise RecordingError(f"{where}: key 'categories' must be a list of category names")
    try:
        return JudgeRecord(exchange.prompt, exchange.response, item["unsafe"], tuple(categories))
    except ValueError as exc:
        raise RecordingError(f"{where}: {exc}") from None


def jbb_recording(path: str | Path) -> list[JudgeRecord]:
    """Llama Guard 1's recorded verdicts from JailbreakBench's `jbb_artifacts_flat.jsonl`.

    `unsafe` is the `jailbroken_llama_guard1` column; an unsafe verdict is in the safemon category
    the JailbreakBench suite importer gives the row's (category, behavior). Rows without that
    verdict, or without a prompt and response (attacks that produced none), are skipped."""
    records: list[JudgeRecord] = []
    skipped = 0
    for where, row in _jsonl(path):
        if not isinstance(row, dict):
            raise RecordingError(f"{where}: expected a JSON object, got {type(row).__name__}")
        verdict, prompt, response = row.get("jailbroken_llama_guard1"), row.get("prompt"), row.get("response")
        if verdict is None or not isinstance(prompt, str) or not isinstance(response, str):
            skipped += 1
            continue
        if not isinstance(verdict, bool):
            raise RecordingError(f"{where}: 'jailbroken_llama_guard1' must be true, false or null")
        category, behavior = row.get("category"), row.get("behavior")
        if not isinstance(category, str) or not isinstance(behavior, str):
            raise RecordingError(f"{where}: 'category' and 'behavior' must be strings")
        records.append(JudgeRecord(prompt, response, verdict, (jbb_category(category, behavior),) if verdict else ()))
    log.info("judge_standin.jbb_loaded", path=str(path), records=len(records), skipped=skipped)
    return records


class _State:
    """What the server threads share with the owner: verdicts, settings, the fault queue, counts."""

    def __init__(self, records: Iterable[JudgeRecord], unknown: Unknown, latency_ms: float, faults: Iterable[Fault], model: str) -> None:
        if unknown not in ("error", "safe", "unsafe"):
            raise ValueError(f"unknown must be 'error', 'safe' or 'unsafe', not {unknown!r}")
        # A later record for the same pair replaces an earlier one.
        self.verdicts = {r.key: r.verdict for r in records}
        self.fallback = None if unknown == "error" else JudgeVerdict(unknown == "unsafe")
        self.latency_s = latency_ms / 1000.0
        self.model = model
        self.rubric_system = normalise(Rubric().system)
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.faults: deque[Fault] = deque(faults)
        self.requests = 0
        self.completions = 0

    def received(self) -> Fault | None:
        """Count a request; the fault it is to suffer, if one is queued."""
        with self.lock:
            self.requests += 1
            return self.faults.popleft() if self.faults else None

    def completed(self) -> None:
        with self.lock:
            self.completions += 1

    def pause(self, seconds: float) -> bool:
        """Sleep, but wake when the server stops; True if it is stopping."""
        return self.stopping.wait(seconds) if seconds > 0 else self.stopping.is_set()


class _Handler(ChatHandler):
    server: _Server  # type: ignore[assignment]

    def do_GET(self) -> None:  # noqa: N802 - stdlib hook name
        path = self.path.split("?", 1)[0].rstrip("/")
        state = self.server.state
        if path == "/health":
            self._send(HTTPStatus.OK, {"status": "ok", "verdicts": len(state.verdicts)})
        elif path in ("/v1/models", "/models"):
            self._send(HTTPStatus.OK, {"object": "list", "data": [{"id": state.model, "object": "model", "created": 0, "owned_by": "standin"}]})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"unknown path {path!r}", "not_found")

    def do_POST(self) -> None:  # noqa: N802 - stdlib hook name
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in CHAT_PATHS:
            self._discard_body()
            self._error(HTTPStatus.NOT_FOUND, f"unknown path {path!r}", "not_found")
            return
        state = self.server.state
        fault = state.received()
        request = self._read_json()
        if request is None:
            return
        model = request.get("model") if isinstance(request.get("model"), str) else state.model
        if state.pause(state.latency_s):
            self.close_connection = True
            return
        if fault is not None:
            log.info("judge_standin.fault", kind=fault.kind, status=fault.status)
            if self._suffer(fault, model):
                return
        self._judge(request, model)

    def _judge(self, request: dict[str, Any], model: str) -> None:
        state = self.server.state
        messages = request.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            self._error(HTTPStatus.BAD_REQUEST, "'messages' must be a list of objects", "invalid_request_error")
            return
        try:
            kind, prompt, response = read_exchange(messages, state.rubric_system)
        except ValueError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc), "invalid_request_error")
            return
        verdict = state.verdicts.get((normalise(prompt), normalise(response)), state.fallback)
        if verdict is None:
            log.info("judge_standin.unmatched", format=kind)
            self._error(HTTPStatus.NOT_FOUND, "no recorded verdict for this prompt and response", "not_found")
            return
        try:
            text = _ANSWERS[kind](verdict)
        except ValueError as exc:
            self._error(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc), "invalid_request_error")
            return
        self._complete(model, text)

    def _suffer(self, fault: Fault, model: str) -> bool:
        """Apply a fault; True if it answered the request (a timeout only delays the real answer)."""
        if fault.kind == "rate_limit":
            body = json.dumps({"error": {"message": "rate limit exceeded", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}})
            self._send_raw(HTTPStatus.TOO_MANY_REQUESTS, body.encode(), {"Retry-After": f"{fault.retry_after_s:g}"})
        elif fault.kind == "server_error":
            self._error(HTTPStatus(fault.status or 500), "injected server error", "server_error")
        elif fault.kind == "timeout":
            if not self.server.state.pause(fault.delay_s):
                return False
            self.close_connection = True  # stopping: drop the request rather than hold up shutdown
        elif fault.kind in ("malformed", "refusal"):
            self._complete(model, fault.text)
        else:  # invalid_json: a completion cut off mid-body
            self._send_raw(HTTPStatus.OK, b'{"id": "chatcmpl-standin", "object": "chat.completion", "choices": [{"index', {})
        return True

    def _complete(self, model: str, text: str) -> None:
        # Counted before it is sent: a client that has the answer finds it counted.
        self.server.state.completed()
        self._send(
            HTTPStatus.OK,
            {
                "id": f"chatcmpl-standin-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": "stop"}],
            },
        )

    def _send_raw(self, status: HTTPStatus, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # bursts of concurrent judge calls must not wait on SYN retries

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        self.state = state
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out leaves a broken pipe behind: expected here, not worth a traceback.
        log.debug("judge_standin.connection_error", client=str(client_address))


class JudgeStandin(LoopbackServer):
    """The recorded judge on a background thread; `start()` returns its base URL (…/v1).

    `unknown` says what a pair missing from the recording gets: HTTP 404 (`error`), or that verdict.
    Faults given here or queued with `inject` spoil the next requests, one each, in order."""

    def __init__(
        self,
        recording: Iterable[JudgeRecord],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        unknown: Unknown = "error",
        faults: Iterable[Fault] = (),
        model: str = "judge-standin",
    ) -> None:
        super().__init__(host, port)
        self._state = _State(recording, unknown, latency_ms, faults, model)

    def __len__(self) -> int:
        return len(self._state.verdicts)

    @property
    def latency_ms(self) -> float:
        """Fixed latency added to every chat request; may be changed while serving."""
        return self._state.latency_s * 1000.0

    @latency_ms.setter
    def latency_ms(self, value: float) -> None:
        self._state.latency_s = value / 1000.0

    def inject(self, *faults: Fault) -> None:
        """Queue faults for the next requests, one request each, after those already queued."""
        with self._state.lock:
            self._state.faults.extend(faults)

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()

    @property
    def pending_faults(self) -> int:
        with self._state.lock:
            return len(self._state.faults)

    @property
    def counts(self) -> Counts:
        """Requests received and completions answered so far."""
        with self._state.lock:
            return Counts(self._state.requests, self._state.completions)

    def reset_counts(self) -> None:
        with self._state.lock:
            self._state.requests = self._state.completions = 0

    def _bind(self) -> _Server:
        self._state.stopping.clear()
        return _Server((self.host, self.port), self._state)

    def _started(self) -> None:
        log.info("judge_standin.started", url=self.url, verdicts=len(self), latency_ms=self.latency_ms)

    def _stopping(self) -> None:
        self._state.stopping.set()  # wake requests held by a delay


def serve(
    recording: Iterable[JudgeRecord],
    *,
    port: int,
    host: str = "127.0.0.1",
    latency_ms: float = 0.0,
    unknown: Unknown = "error",
    on_start: Callable[[str], None] | None = None,
) -> None:
    """Serve recorded verdicts until interrupted (the `safemon judge standin` command); `on_start`
    gets the base URL once the port is bound."""
    with stop_on_signals() as stop:
        standin = JudgeStandin(recording, host=host, port=port, latency_ms=latency_ms, unknown=unknown)
        url = standin.start()
        if on_start is not None:
            on_start(url)
        try:
            while not stop.wait(0.2):  # the server runs on its thread; this one waits for Ctrl-C
                pass
            log.info("judge_standin.interrupted")
        finally:
            standin.stop()
