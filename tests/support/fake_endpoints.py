"""Small real HTTP servers on loopback that misbehave the way model endpoints do.

Each `FakeEndpoint` answers POST .../chat/completions in one `mode`:

- "ok": a valid chat.completion echoing the last user message (after `delay_s`);
- "status": always HTTP `status` with an OpenAI-style error body;
- "rate_limited": HTTP 429 with `Retry-After: retry_after` for the first `fail_first`
  requests, then "ok";
- "invalid_json": HTTP 200 with a body that is not JSON;
- "no_content": HTTP 200 JSON whose choices[0].message.content is `content` (null by default);
- "echo_auth": HTTP 400 whose error message echoes the Authorization header;
- "hang": accepts the request and never answers (until the server stops).

Every request is recorded (arrival time, headers, JSON body), and the most requests in
flight at once is tracked, so tests can assert retries, rate limits and concurrency.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MISSING = object()  # FakeEndpoint(content=MISSING) sends a message without a "content" key


@dataclass
class Seen:
    """One request the fake endpoint received."""

    at: float  # time.monotonic() on arrival
    headers: dict[str, str]
    body: Any


@dataclass
class FakeEndpoint:
    """A misbehaving OpenAI-compatible endpoint; a context manager yielding itself (see `url`)."""

    mode: str = "ok"
    status: int = 500
    retry_after: str | None = "0.3"
    fail_first: int = 1
    delay_s: float = 0.0
    content: Any = None  # for "no_content"; MISSING drops the key
    seen: list[Seen] = field(default_factory=list)
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._stopping = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen = Seen(time.monotonic(), dict(self.headers.items()), json.loads(raw or b"null"))
                fake._enter(seen)
                try:
                    fake._answer(self, seen.body)
                finally:
                    fake._leave()

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

            def handle_error(self, request: Any, client_address: Any) -> None:
                return  # clients that time out leave broken pipes; expected here

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def count(self) -> int:
        return len(self.seen)

    def __enter__(self) -> FakeEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()  # releases "hang" handlers
        self._server.shutdown()
        self._server.server_close()

    def _enter(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _answer(self, handler: BaseHTTPRequestHandler, body: Any) -> None:
        mode = self.mode
        if mode == "rate_limited":
            with self._lock:
                limited = len(self.seen) <= self.fail_first
            if limited:
                headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
                _send(handler, 429, {"error": {"message": "rate limit exceeded", "type": "rate_limit"}}, headers)
                return
            mode = "ok"
        if mode == "hang":
            self._stopping.wait(30)
            return
        if self.delay_s:
            time.sleep(self.delay_s)
        if mode == "ok":
            messages = body.get("messages", []) if isinstance(body, dict) else []
            _send(handler, 200, _completion(f"echo: {messages[-1]['content'] if messages else ''}"))
        elif mode == "status":
            _send(handler, self.status, {"error": {"message": f"boom {self.status}", "type": "server_error"}})
        elif mode == "echo_auth":
            echoed = handler.headers.get("Authorization")
            _send(handler, 400, {"error": {"message": f"bad credentials: {echoed}", "type": "auth"}})
        elif mode == "invalid_json":
            _send_raw(handler, 200, b"<html>this is not json</html>", "text/html")
        elif mode == "no_content":
            message: dict[str, Any] = {"role": "assistant"}
            if self.content is not MISSING:
                message["content"] = self.content
            _send(handler, 200, {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": message}]})
        else:
            raise ValueError(f"unknown mode {mode!r}")


def closed_port_url() -> str:
    """A base URL on a loopback port where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _completion(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }


def _send(handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    _send_raw(handler, status, json.dumps(body).encode(), "application/json", headers)


def _send_raw(handler: BaseHTTPRequestHandler, status: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(payload)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(payload)
