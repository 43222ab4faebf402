"""A Slack-compatible HTTP server on loopback, for tests: the slice of the Web API safemon uses.

Speaks `chat.postMessage`, `auth.test`, the three steps of `files_upload_v2`
(`files.getUploadURLExternal`, the upload URL, `files.completeUploadExternal`) and one
incoming-webhook path. It checks the bot token, enforces the Block Kit limits Slack
rejects messages for, records every request, and can rate-limit (429 + Retry-After) or
go down on demand.

    with SlackServer(token="xoxb-test") as slack:
        settings = load_settings(slack_api_url=slack.api_url, ...)
        ...
        assert slack.messages[0]["channel"] == "#alerts"
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import structlog

log = structlog.get_logger(__name__)

WEBHOOK_PATH = "/services/T000/B000/XXX"
CHANNEL_ID = "C0SAFEMON"
# Slack's Block Kit limits; messages breaking them are refused with `invalid_blocks`.
_MAX_BLOCKS = 50
_MAX_SECTION_TEXT = 3000
_MAX_HEADER_TEXT = 150
_BLOCK_TYPES = {"header", "section", "context", "divider", "actions", "image", "rich_text", "input", "file", "video"}


@dataclass(frozen=True)
class Request:
    """One request the server received, as it saw it."""

    method: str
    path: str
    at: float  # time.monotonic() on arrival
    status: int
    body: Any  # parsed: dict for JSON/form bodies, bytes for uploads


@dataclass
class _Faults:
    throttle_left: int = 0
    retry_after_s: int = 1
    down: str | None = None  # None, "close" (drop the connection) or "503"
    lock: threading.Lock = field(default_factory=threading.Lock)


class SlackServer:
    """A real HTTP server on 127.0.0.1 that answers like Slack's Web API and webhooks."""

    def __init__(self, token: str = "xoxb-test", channel_id: str = CHANNEL_ID) -> None:
        self.token = token
        self.channel_id = channel_id
        self.requests: list[Request] = []
        self.messages: list[dict] = []  # chat.postMessage payloads that were accepted
        self.webhook_messages: list[dict] = []
        self.uploads: dict[str, bytes] = {}  # file_id -> bytes received at the upload URL
        self.completed_uploads: list[dict] = []  # files.completeUploadExternal payloads
        self._faults = _Faults()
        self._ts = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="slack-server", daemon=True)

    # Lifecycle -------------------------------------------------------------------------

    def start(self) -> SlackServer:
        """Start serving in a background thread."""
        self._thread.start()
        log.info("slack_server.started", url=self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> SlackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Addresses -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        """The Web API base URL, for `Settings.slack_api_url` / `WebClient(base_url=...)`."""
        return f"{self.base_url}/api/"

    @property
    def webhook_url(self) -> str:
        """The incoming-webhook URL this server accepts."""
        return f"{self.base_url}{WEBHOOK_PATH}"

    # Faults ----------------------------------------------------------------------------

    def throttle(self, count: int, retry_after_s: int = 1) -> None:
        """Answer the next `count` requests with HTTP 429 and `Retry-After: retry_after_s`."""
        with self._faults.lock:
            self._faults.throttle_left = count
            self._faults.retry_after_s = retry_after_s

    def go_down(self, mode: str = "close") -> None:
        """Fail every request: "close" drops connections unanswered, "503" answers Service Unavailable."""
        if mode not in ("close", "503"):
            raise ValueError(f"unknown mode {mode!r}; valid: close, 503")
        with self._faults.lock:
            self._faults.down = mode

    def come_up(self) -> None:
        """Serve normally again."""
        with self._faults.lock:
            self._faults.down = None

    def requests_to(self, path: str) -> list[Request]:
        """Requests received for `path` (e.g. "/api/chat.postMessage"), in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # Internals used by the handler -------------------------------------------------------

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _fault(self) -> tuple[str, int] | None:
        with self._faults.lock:
            if self._faults.down:
                return (self._faults.down, 0)
            if self._faults.throttle_left > 0:
                self._faults.throttle_left -= 1
                return ("429", self._faults.retry_after_s)
        return None

    def _next_ts(self) -> str:
        # Real ts values are "<unix seconds>.<6 digits>" and strictly increase per channel.
        return f"{int(time.time())}.{next(self._ts):06d}"

    def _next_file_id(self) -> str:
        return f"F{next(self._file_ids):08d}"


def _handler_for(server: SlackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            # Route the stdlib's access log through structlog instead of stderr.
            log.debug("slack_server.request", line=format % args)

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802 - stdlib naming
            self._dispatch("POST")

        def _dispatch(self, method: str) -> None:
            arrived = time.monotonic()
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = urlsplit(self.path).path
            fault = server._fault()
            if fault is not None and fault[0] == "close":
                server._record(Request(method, path, arrived, 0, None))
                self.close_connection = True
                # Shut the socket without a status line: the client sees a dropped connection.
                self.connection.shutdown(2)
                return
            if fault is not None:
                status = 503 if fault[0] == "503" else 429
                server._record(Request(method, path, arrived, status, None))
                headers = {"Retry-After": str(fault[1])} if status == 429 else {}
                body = {"ok": False, "error": "ratelimited"} if status == 429 else {"ok": False, "error": "service_unavailable"}
                self._reply(status, body, headers)
                return
            status, body = self._route(method, path, raw)
            # Upload URLs receive raw file bytes (urllib labels them form-encoded regardless).
            parsed = raw if path.startswith("/upload/") else _parse_body(self.headers.get("Content-Type", ""), raw)
            server._record(Request(method, path, arrived, status, parsed))
            self._reply(status, body)

        def _route(self, method: str, path: str, raw: bytes) -> tuple[int, Any]:
            content_type = self.headers.get("Content-Type", "")
            if path == WEBHOOK_PATH and method == "POST":
                return _webhook(server, _parse_body(content_type, raw))
            if path.startswith("/upload/") and method == "POST":
                file_id = path.rsplit("/", 1)[1]
                if file_id not in server.uploads:
                    return 404, "unknown upload"
                server.uploads[file_id] = raw
                return 200, f"OK - {len(raw)}"
            if not path.startswith("/api/"):
                return 404, {"ok": False, "error": "unknown_method"}
            params = _parse_body(content_type, raw)
            if not isinstance(params, dict):
                return 200, {"ok": False, "error": "invalid_form_data"}
            token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip() or params.get("token", "")
            if not token:
                return 200, {"ok": False, "error": "not_authed"}
            if token != server.token:
                return 200, {"ok": False, "error": "invalid_auth"}
            api = {
                "chat.postMessage": _post_message,
                "auth.test": _auth_test,
                "files.getUploadURLExternal": _get_upload_url,
                "files.completeUploadExternal": _complete_upload,
            }.get(path.removeprefix("/api/"))
            if api is None:
                return 404, {"ok": False, "error": "unknown_method"}
            return api(server, params)

        def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            if isinstance(body, str):
                payload, content_type = body.encode(), "text/plain; charset=utf-8"
            else:
                payload, content_type = json.dumps(body).encode(), "application/json; charset=utf-8"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def _parse_body(content_type: str, raw: bytes) -> Any:
    if content_type.startswith("application/json"):
        try:
            return json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return None
    if content_type.startswith("application/x-www-form-urlencoded"):
        try:
            return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            return None
    return raw


def _decode_json_fields(params: dict, *names: str) -> dict:
    # Form-encoded calls carry structured fields (blocks, files) as JSON strings.
    decoded = dict(params)
    for name in names:
        if isinstance(decoded.get(name), str):
            decoded[name] = json.loads(decoded[name])
    return decoded


def _post_message(server: SlackServer, params: dict) -> tuple[int, dict]:
    try:
        message = _decode_json_fields(params, "blocks", "attachments")
    except json.JSONDecodeError:
        return 200, {"ok": False, "error": "invalid_blocks_format"}
    channel = message.get("channel")
    if not channel:
        return 200, {"ok": False, "error": "channel_not_found"}
    if not message.get("text") and not message.get("blocks"):
        return 200, {"ok": False, "error": "no_text"}
    problem = _block_problem(message.get("blocks"))
    if problem:
        return 200, {"ok": False, "error": "invalid_blocks", "errors": [problem]}
    ts = server._next_ts()
    with server._lock:
        server.messages.append(message)
    stored = {k: v for k, v in message.items() if k in ("text", "blocks", "thread_ts")}
    return 200, {"ok": True, "channel": server.channel_id, "ts": ts, "message": {"type": "message", "ts": ts, **stored}}


def _auth_test(server: SlackServer, params: dict) -> tuple[int, dict]:
    return 200, {
        "ok": True,
        "url": f"{server.base_url}/",
        "team": "safemon-test",
        "user": "safemon",
        "team_id": "T000",
        "user_id": "U000",
        "bot_id": "B000",
    }


def _get_upload_url(server: SlackServer, params: dict) -> tuple[int, dict]:
    if not params.get("filename") or not str(params.get("length", "")).isdigit():
        return 200, {"ok": False, "error": "invalid_arguments"}
    file_id = server._next_file_id()
    with server._lock:
        server.uploads[file_id] = b""
    return 200, {"ok": True, "upload_url": f"{server.base_url}/upload/{file_id}", "file_id": file_id}


def _complete_upload(server: SlackServer, params: dict) -> tuple[int, dict]:
    try:
        payload = _decode_json_fields(params, "files")
    except json.JSONDecodeError:
        return 200, {"ok": False, "error": "invalid_arguments"}
    files = payload.get("files") or []
    if not files or any(f.get("id") not in server.uploads for f in files):
        return 200, {"ok": False, "error": "file_not_found"}
    with server._lock:
        server.completed_uploads.append(payload)
    return 200, {
        "ok": True,
        "files": [{"id": f["id"], "title": f.get("title", ""), "size": len(server.uploads[f["id"]])} for f in files],
    }


def _webhook(server: SlackServer, body: Any) -> tuple[int, str]:
    if not isinstance(body, dict) or not (body.get("text") or body.get("blocks")):
        return 400, "no_text"
    if _block_problem(body.get("blocks")):
        return 400, "invalid_blocks"
    with server._lock:
        server.webhook_messages.append(body)
    return 200, "ok"


def _block_problem(blocks: Any) -> str | None:
    """The first reason Slack would refuse these blocks, or None."""
    if blocks is None:
        return None
    if not isinstance(blocks, list):
        return "blocks must be an array"
    if len(blocks) > _MAX_BLOCKS:
        return f"more than {_MAX_BLOCKS} blocks"
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in _BLOCK_TYPES:
            return f"block {i}: unknown type {kind!r}"
        text = block.get("text")
        if kind == "header" and (not isinstance(text, dict) or text.get("type") != "plain_text" or len(text.get("text", "")) > _MAX_HEADER_TEXT):
            return f"block {i}: header needs plain_text of at most {_MAX_HEADER_TEXT} characters"
        if kind == "section":
            if text is None and not block.get("fields"):
                return f"block {i}: section needs text or fields"
            if text is not None and not (0 < len(text.get("text", "")) <= _MAX_SECTION_TEXT):
                return f"block {i}: section text must be 1..{_MAX_SECTION_TEXT} characters"
        if kind in ("context", "actions") and not block.get("elements"):
            return f"block {i}: {kind} needs elements"
    return None
