"""A replay endpoint: an OpenAI-compatible chat server that answers from recorded responses.

It stands in for the model under test in the demo and in tests, over real HTTP. A
recording is JSONL, one `{"model": ..., "prompt": ..., "system": ..., "response": ...}`
per line (`model` and `system` optional). A request is matched on the normalised text
of its last user message: a recording for the request's `model` first, then one with
no model; among those, one whose system prompt equals the request's, then one recorded
without a system prompt, then the first.
Unmatched requests get HTTP 404 with an OpenAI-style error body.

Each connection is served on its own daemon thread, so injected latency (a sleep) delays
only its own request and many requests can be in flight at once.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import structlog

from pipeline.signals import stop_on_signals

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024

Key = tuple[str | None, str]


class RecordingError(ValueError):
    """A recording file cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Recorded:
    """One recorded exchange: the response a model gave to a prompt (under a system prompt)."""

    prompt: str
    response: str
    model: str | None = None
    system: str | None = None


def normalise(text: str) -> str:
    """The matching form of a prompt: casefolded, whitespace collapsed, stripped."""
    return " ".join(text.casefold().split())


def load_recording(path: str | Path) -> dict[Key, list[Recorded]]:
    """Read a JSONL recording into `{(model or None, normalised prompt): [Recorded, ...]}`."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise RecordingError(f"{path}: recording not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path}: cannot read recording: {exc}") from None
    index: dict[Key, list[Recorded]] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordingError(f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        rec = parse_recorded(item, f"{path}:{lineno}")
        index.setdefault((rec.model, normalise(rec.prompt)), []).append(rec)
    return index


def parse_recorded(item: Any, where: str) -> Recorded:
    """One recording line as a `Recorded`, or a RecordingError naming `where` (file:line) and the problem."""
    if not isinstance(item, dict):
        raise RecordingError(f"{where}: expected a JSON object, got {type(item).__name__}")
    unknown = sorted(set(item) - {"model", "prompt", "system", "response"})
    if unknown:
        raise RecordingError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    for key in ("prompt", "response"):
        if not isinstance(item.get(key), str):
            raise RecordingError(f"{where}: key {key!r} must be a string" + ("" if key in item else " (missing)"))
    for key in ("model", "system"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise RecordingError(f"{where}: key {key!r} must be a string or absent")
    if not normalise(item["prompt"]):
        raise RecordingError(f"{where}: key 'prompt' is blank")
    return Recorded(prompt=item["prompt"], response=item["response"], model=item.get("model") or None, system=item.get("system"))


@runtime_checkable
class Answers(Protocol):
    """What the replay server asks of its answers: a Replay, or a stand-in that answers like one."""

    def __len__(self) -> int: ...

    def models(self) -> list[str]: ...

    def find(self, model: str | None, messages: list[dict[str, Any]]) -> Recorded | None: ...


class Replay:
    """Looks up the recorded response for a chat request."""

    def __init__(self, index: dict[Key, list[Recorded]]) -> None:
        self.index = index

    def __len__(self) -> int:
        return sum(len(v) for v in self.index.values())

    def models(self) -> list[str]:
        """The model names the recording answers for."""
        return sorted({m for m, _ in self.index if m is not None})

    def find(self, model: str | None, messages: list[dict[str, Any]]) -> Recorded | None:
        """The recording answering the last user message, or None."""
        user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        if user is None or not isinstance(user.get("content"), str):
            return None
        prompt = normalise(user["content"])
        system = next((m.get("content") for m in messages if m.get("role") == "system"), None)
        system = normalise(system) if isinstance(system, str) else None
        for key in ((model, prompt), (None, prompt)) if model else ((None, prompt),):
            candidates = self.index.get(key)
            if candidates:
                same = [r for r in candidates if (normalise(r.system) if r.system else None) == system]
                unsystemed = [r for r in candidates if not r.system]
                return (same or unsystemed or candidates)[0]
        return None


class ChatHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint on loopback: body reading, error bodies, keep-alive.
    The replay endpoint serves recorded answers with it; the judge stand-in subclasses it."""

    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, so clients reuse connections
    # Headers and body go out in separate writes; without this, Nagle plus delayed ACK adds ~40 ms.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Per-request access logs would dominate the cost of a fast replay; failures are logged below.
        return

    def do_GET(self) -> None:  # noqa: N802 - stdlib hook name
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._send(HTTPStatus.OK, {"status": "ok", "recordings": len(self.server.replay)})
        elif path in ("/v1/models", "/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "replay"} for m in self.server.replay.models()]
            self._send(HTTPStatus.OK, {"object": "list", "data": data})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"unknown path {path!r}", "not_found")

    def do_POST(self) -> None:  # noqa: N802 - stdlib hook name
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._discard_body()
            self._error(HTTPStatus.NOT_FOUND, f"unknown path {path!r}", "not_found")
            return
        request = self._read_json()
        if request is None:
            return
        messages = request.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            self._error(HTTPStatus.BAD_REQUEST, "'messages' must be a list of objects", "invalid_request_error")
            return
        if request.get("stream"):
            self._error(HTTPStatus.BAD_REQUEST, "streaming is not supported by the replay endpoint", "invalid_request_error")
            return
        model = request.get("model") if isinstance(request.get("model"), str) else None
        if self.server.latency_s:
            time.sleep(self.server.latency_s)
        found = self.server.replay.find(model, messages)
        if found is None:
            log.info("replay.unmatched", model=model)
            self._error(HTTPStatus.NOT_FOUND, "no recorded response for prompt", "not_found")
            return
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages)
        completion_tokens = len(found.response.split())
        self._send(
            HTTPStatus.OK,
            {
                "id": f"chatcmpl-replay-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model or found.model or "replay",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": found.response},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                # Word counts: a stand-in for tokens, enough for dashboards that sum usage.
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )

    def _read_json(self) -> dict[str, Any] | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._error(HTTPStatus.BAD_REQUEST, "missing, invalid or oversized Content-Length", "invalid_request_error")
            return None
        try:
            data = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._error(HTTPStatus.BAD_REQUEST, "request body is not valid JSON", "invalid_request_error")
            return None
        if not isinstance(data, dict):
            self._error(HTTPStatus.BAD_REQUEST, "request body must be a JSON object", "invalid_request_error")
            return None
        return data

    def _discard_body(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if 0 < length <= MAX_BODY_BYTES:
            self.rfile.read(length)
        elif length:
            self.close_connection = True

    def _error(self, status: HTTPStatus, message: str, kind: str) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

    def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops connection bursts (64 clients at once) into SYN retries of 1 s.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], replay: Answers, latency_s: float) -> None:
        self.replay = replay
        self.latency_s = latency_s
        super().__init__(address, ChatHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout) leaves a broken pipe; log it instead of printing a traceback.
        log.debug("replay.connection_error", client=str(client_address), error=repr(sys.exc_info()[1]))


class LoopbackServer:
    """An HTTP server on a background thread: `start()` returns its base URL (…/v1), `stop()`
    closes it; a context manager. Subclasses build the server (`_bind`) and may act when it
    starts (`_started`) or before it stops (`_stopping`)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _bind(self) -> ThreadingHTTPServer:
        raise NotImplementedError

    def _started(self) -> None:
        """Called once the server listens (a log line)."""

    def _stopping(self) -> None:
        """Called before the server shuts down (wake requests it holds)."""

    @property
    def url(self) -> str:
        """Base URL of the OpenAI-compatible API, e.g. http://127.0.0.1:8765/v1."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> str:
        """Start serving on a background thread (port 0 picks a free one); returns the base URL."""
        if self._server is not None:
            return self.url
        self._server = self._bind()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name=type(self).__name__, daemon=True)
        self._thread.start()
        self._started()
        return self.url

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is None:
            return
        self._stopping()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ReplayServer(LoopbackServer):
    """A replay endpoint on a background thread; `start()` returns its base URL (…/v1)."""

    def __init__(
        self,
        recording: str | Path | dict[Key, list[Recorded]] | Answers,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
    ) -> None:
        super().__init__(host, port)
        # A Replay, or anything that answers like one (the yielding stand-in), serves as is.
        if isinstance(recording, Answers):
            self.replay = recording
        else:
            self.replay = Replay(recording if isinstance(recording, dict) else load_recording(recording))
        self.latency_ms = latency_ms

    def _bind(self) -> ThreadingHTTPServer:
        return _Server((self.host, self.port), self.replay, self.latency_ms / 1000.0)

    def _started(self) -> None:
        log.info("replay.started", url=self.url, recordings=len(self.replay), latency_ms=self.latency_ms)


def serve(file: str | Path, port: int, host: str = "127.0.0.1", latency_ms: float = 0.0) -> None:
    """Serve a recording until interrupted (the `safemon target replay` command)."""
    with stop_on_signals() as stop:
        server = ReplayServer(file, host=host, port=port, latency_ms=latency_ms)
        server.start()
        try:
            while not stop.wait(0.2):  # the server runs on its thread; this one waits for Ctrl-C
                pass
            log.info("replay.interrupted")
        finally:
            server.stop()
