"""A loopback HTTP server speaking the Mistral API, with scripted faults (stdlib only)."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import math
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType, TracebackType
from typing import Any, Literal

from mistral_nbenv.secrets import mask
from mistral_nbenv.testing import generated
from mistral_nbenv.testing.chatscript import scripted_message
from mistral_nbenv.testing.reply import Reply as _Reply
from mistral_nbenv.testing.routes import Routes

__all__ = [
    "DEFAULT_CATALOG",
    "DEFAULT_MODELS",
    "Fault",
    "MistralTestServer",
    "ModelSpec",
    "RecordedRequest",
    "Responder",
    "ServerLimits",
    "echo_answer",
    "estimate_tokens",
    "fake_embedding",
]

CHAT_PATH = "/v1/chat/completions"
FIM_PATH = "/v1/fim/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
MODELS_PATH = "/v1/models"


@dataclass(frozen=True)
class ModelSpec:
    """A dated model of the server's catalog: its aliases, and its announced retirement.

    ``GET /v1/models`` lists it with ``aliases`` and ``deprecation`` (and the replacement),
    and lists each alias as a card whose ``name`` is this ID, as the API does. A chat, FIM
    or embeddings answer (not a stream) from a deprecated model carries
    ``x-model-deprecation-timestamp``;
    after ``deprecation`` the model is retired and answers 400.
    """

    id: str
    aliases: tuple[str, ...] = ()
    deprecation: str | None = None  # ISO 8601, e.g. "2027-05-31T00:00:00Z"
    replacement: str | None = None

    def retired(self, now: float | None = None) -> bool:
        """True once ``deprecation`` has passed."""
        if self.deprecation is None:
            return False
        when = datetime.fromisoformat(self.deprecation.replace("Z", "+00:00"))
        return when.timestamp() <= (time.time() if now is None else now)


#: The default catalog: dated IDs behind the ``-latest`` aliases, and one older ID whose
#: retirement is announced (its replacement is the current large model).
DEFAULT_CATALOG: tuple[ModelSpec, ...] = (
    ModelSpec("mistral-small-2506", ("mistral-small-latest",)),
    ModelSpec("mistral-medium-2508", ("mistral-medium-latest",)),
    ModelSpec("mistral-large-2512", ("mistral-large-latest",)),
    ModelSpec("mistral-large-2411", (), "2027-05-31T00:00:00Z", "mistral-large-2512"),
    ModelSpec("codestral-2508", ("codestral-latest",)),
    ModelSpec("mistral-embed-2312", ("mistral-embed",)),
)

#: Model ids listed by ``GET /v1/models`` unless the server is given others.
DEFAULT_MODELS: tuple[str, ...] = (
    "mistral-small-latest",
    "mistral-medium-latest",
    "mistral-large-latest",
    "codestral-latest",
    "mistral-embed",
    "mistral-small-2506",
    "mistral-medium-2508",
    "mistral-large-2512",
    "mistral-large-2411",
    "codestral-2508",
    "mistral-embed-2312",
)


@dataclass(frozen=True)
class ServerLimits:
    """The limits the server enforces and announces, as the API does (0: none).

    Per minute (a sliding 60 s window): requests and tokens; past either, a 429 with
    ``Retry-After`` (seconds until the window has room). Per month (the server's life):
    tokens; past it, a 429 that says the monthly limit is reached and
    ``x-ratelimit-remaining-tokens-month: 0``. Every answer carries the
    ``x-ratelimit-limit-*`` / ``x-ratelimit-remaining-*`` headers of the limits set.
    """

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    tokens_per_month: int = 0


FaultKind = Literal["status", "slow", "drop", "drop_mid_stream", "malformed"]


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received (headers keyed in lower case)."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: Any
    raw_body: bytes = field(repr=False)
    timestamp: float

    @property
    def api_key(self) -> str | None:
        """The bearer token sent in the ``Authorization`` header, if any."""
        auth = self.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    @property
    def stream(self) -> bool:
        """Whether the JSON body asked for a streamed (SSE) answer."""
        return isinstance(self.body, dict) and self.body.get("stream") is True

    def header(self, name: str, default: str | None = None) -> str | None:
        """Return a header value, looked up case-insensitively."""
        return self.headers.get(name.lower(), default)

    def __repr__(self) -> str:
        key = self.api_key
        shown = f", api_key={mask(key)!r}" if key else ""
        return f"RecordedRequest({self.method} {self.path}{shown}, body={self.body!r})"


#: Scripts chat/FIM answers: return the answer text, a full JSON body, or None for the default.
Responder = Callable[[RecordedRequest], "str | Mapping[str, Any] | None"]


@dataclass(frozen=True)
class Fault:
    """A scripted misbehaviour for one request; build it with the class methods."""

    kind: FaultKind
    status_code: int = 200
    retry_after: float | str | datetime | None = None
    retry_after_http_date: bool = False
    body: Any = field(default=None, hash=False)
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    delay: float = 0.0
    chunk_delay: float = 0.0
    after_chunks: int = 0

    @classmethod
    def status(
        cls,
        code: int,
        *,
        retry_after: float | str | datetime | None = None,
        http_date: bool = False,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Answer with an HTTP error (``body`` defaults to one shaped like the real API's)."""
        if not 400 <= code <= 599:
            raise ValueError(f"Fault.status needs a 4xx/5xx code, got {code}")
        return cls(
            "status",
            status_code=code,
            retry_after=retry_after,
            retry_after_http_date=http_date,
            body=body,
            headers=MappingProxyType(dict(headers or {})),
        )

    @classmethod
    def rate_limit(
        cls, retry_after: float | str | datetime | None = 1, *, http_date: bool = False
    ) -> Fault:
        """Answer 429 with ``Retry-After`` in seconds (or as an HTTP-date with ``http_date``)."""
        return cls.status(429, retry_after=retry_after, http_date=http_date)

    @classmethod
    def slow(cls, delay: float, *, chunk_delay: float = 0.0) -> Fault:
        """Wait ``delay`` seconds before answering normally (streams: also between chunks)."""
        return cls("slow", delay=delay, chunk_delay=chunk_delay)

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection without sending any response."""
        return cls("drop")

    @classmethod
    def drop_mid_stream(cls, after_chunks: int = 1) -> Fault:
        """Send the first ``after_chunks`` stream events (or half a JSON body), then close."""
        return cls("drop_mid_stream", after_chunks=after_chunks)

    @classmethod
    def malformed(cls, body: Any = None) -> Fault:
        """Answer 200 with JSON the SDK cannot validate (default ``{"unexpected": true}``)."""
        return cls("malformed", body={"unexpected": True} if body is None else body)

    def __str__(self) -> str:
        if self.kind == "status":
            return f"status {self.status_code}"
        if self.kind == "slow":
            return f"slow {self.delay}s"
        return self.kind


def estimate_tokens(text: str) -> int:
    """Plausible token count for ``text`` (about four characters per token, at least one)."""
    return max(1, len(text) // 4)


def fake_embedding(text: str, dimensions: int = 16) -> list[float]:
    """Deterministic unit vector derived from a hash of ``text``."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        for (word,) in struct.iter_unpack(">I", digest):
            values.append(word / 0xFFFFFFFF * 2.0 - 1.0)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def _content_text(content: Any) -> str:
    """Text of a message's ``content`` (a string or a list of content chunks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
        )
    return "" if content is None else str(content)


def echo_answer(body: Any) -> str:
    """The default answer: ``"Echo: "`` plus the last user message (chat) or the prompt (FIM)."""
    if not isinstance(body, dict):
        return "Echo: "
    if "messages" in body:
        messages = body.get("messages") or []
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        last = users[-1] if users else (messages[-1] if messages else {})
        return "Echo: " + _content_text(last.get("content") if isinstance(last, dict) else last)
    return "Echo: " + _content_text(body.get("prompt"))


def _prompt_tokens(body: Mapping[str, Any]) -> int:
    if "messages" in body:
        messages = body.get("messages") or []
        return (
            sum(
                estimate_tokens(_content_text(m.get("content") if isinstance(m, dict) else m))
                for m in messages
            )
            or 1
        )
    return estimate_tokens(_content_text(body.get("prompt")) + _content_text(body.get("suffix")))


def _split_words(text: str) -> list[str]:
    """Split ``text`` into stream pieces whose concatenation is ``text``."""
    return re.findall(r"\S+\s*|\s+", text) or [""]


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "timeout",
    429: "rate_limited",
}


def _error_body(code: int) -> dict[str, Any]:
    """An error body shaped like the real API's for ``code``."""
    phrase = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "Error"
    if code == 401:
        return {"message": "Unauthorized", "request_id": uuid.uuid4().hex}
    if code == 422:
        return {
            "detail": [
                {"type": "missing", "loc": ["body", "model"], "msg": "Field required", "input": {}}
            ]
        }
    if code == 429:
        phrase = "Requests rate limit exceeded"
    return {
        "object": "error",
        "message": phrase,
        "type": _ERROR_TYPES.get(code, "internal_server_error" if code >= 500 else "api_error"),
        "param": None,
        "code": str(code),
    }


def _retry_after_value(fault: Fault) -> str | None:
    value = fault.retry_after
    if value is None:
        return None
    if isinstance(value, datetime):
        return email.utils.format_datetime(value, usegmt=True)
    if isinstance(value, str):
        return value
    if fault.retry_after_http_date:
        # Round up so a client that honours the date waits at least ``value`` seconds.
        return email.utils.formatdate(math.ceil(time.time() + value), usegmt=True)
    return str(int(value)) if float(value).is_integer() else str(value)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True
    request_queue_size = 1024  # a hundred clients connecting at once are all accepted
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: MistralTestServer) -> None:
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.accepted = 0  # connections accepted since start
        self.most_open = 0  # the most connections open at once
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
            self.accepted += 1
            self.most_open = max(self.most_open, len(self.connections))
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open client socket so that idle keep-alive handlers return."""
        with self.connections_lock:
            sockets = list(self.connections)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.app.stopping:
            return
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # the client went away; nothing to report
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without this every keep-alive request pays a 40 ms delayed-ACK stall.
    disable_nagle_algorithm = True
    server_version = "mistral-nbenv-testing"
    sys_version = ""
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.app.verbose:
            super().log_message(format, *args)

    def handle_one_request(self) -> None:
        if self.server.app.stopping:
            self.close_connection = True
            return
        super().handle_one_request()

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # -- request handling -------------------------------------------------------------------

    def _dispatch(self) -> None:
        app = self.server.app
        path, _, query = self.path.partition("?")
        raw = self._read_body()
        body: Any = None
        bad_json = False
        content_type = self.headers.get("Content-Type", "")
        if raw and ("json" in content_type or not content_type):  # multipart / form: routes
            try:
                body = json.loads(raw)
            except ValueError:
                bad_json = True
        record = RecordedRequest(
            method=self.command,
            path=path,
            query=query,
            headers=MappingProxyType({k.lower(): v for k, v in self.headers.items()}),
            body=body,
            raw_body=raw,
            timestamp=time.time(),
        )
        app._begin(record)
        try:
            self._respond(record, bad_json)
        finally:
            app._end()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
            while self.rfile.readline().strip():  # trailers, up to the blank line
                pass
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _respond(self, record: RecordedRequest, bad_json: bool) -> None:
        app = self.server.app
        if app.latency > 0 and app._pause(app.latency):
            return self._drop()
        expected = app.expected_api_key
        if expected is not None and record.api_key != expected:
            return self._send_json(401, _error_body(401))
        fault = app._take_fault(record.path)
        if fault is not None:
            if fault.kind == "drop":
                return self._drop()
            if fault.kind == "status":
                body = _error_body(fault.status_code) if fault.body is None else fault.body
                headers = dict(fault.headers)
                retry_after = _retry_after_value(fault)
                if retry_after is not None:
                    headers["Retry-After"] = retry_after
                return self._send_json(fault.status_code, body, headers)
            if fault.kind == "slow" and app._pause(fault.delay):
                return self._drop()
        if bad_json:
            return self._send_json(400, {"object": "error", "message": "Invalid JSON body"})
        refused = app._over_limit(record)
        if refused is not None:
            return self._send_json(refused.status, refused.body, refused.headers)
        reply = app._route(record)
        app._charge(record, reply)
        if fault is not None and fault.kind == "malformed":
            reply = _Reply(
                body=fault.body, events=[fault.body] if reply.events is not None else None
            )
        chunk_delay = fault.chunk_delay if fault is not None and fault.kind == "slow" else 0.0
        chunk_delay = chunk_delay or app.chunk_delay
        cut = fault.after_chunks if fault is not None and fault.kind == "drop_mid_stream" else None
        if reply.events is not None and 200 <= reply.status < 300:
            return self._send_events(reply.events, chunk_delay, cut, reply.headers)
        return self._send_json(reply.status, reply.body, reply.headers, cut=cut is not None)

    # -- writing ----------------------------------------------------------------------------

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send_json(
        self,
        status: int,
        body: Any,
        headers: Mapping[str, str] | None = None,
        *,
        cut: bool = False,
    ) -> None:
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        headers = dict(headers or {})
        self.send_response(status)
        self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if cut:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            return self._drop()
        self.wfile.write(data)

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _send_events(
        self,
        events: Sequence[Any],
        chunk_delay: float,
        cut: int | None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        app = self.server.app
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()
        for index, event in enumerate(events):
            if cut is not None and index >= cut:
                return self._drop()
            if index and chunk_delay > 0 and app._pause(chunk_delay):
                return self._drop()
            name, event = event if isinstance(event, tuple) else (None, event)  # (event:, data:)
            payload = event if isinstance(event, str) else json.dumps(event)
            head = f"event: {name}\n" if name else ""
            self._write_chunk(f"{head}data: {payload}\n\n".encode())
        if cut is not None:
            return self._drop()
        if not any(isinstance(event, tuple) for event in events):  # named events: no sentinel
            self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")


class MistralTestServer:
    """A Mistral-compatible HTTP server on loopback, run in a daemon thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        expected_api_key: str | None = None,
        responder: Responder | None = None,
        models: Iterable[str] = DEFAULT_MODELS,
        catalog: Iterable[ModelSpec] = DEFAULT_CATALOG,
        embedding_dimensions: int = 16,
        verbose: bool = False,
        limits: ServerLimits | None = None,
        resolve_aliases: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        #: Seconds every request waits before it is answered.
        self.latency = latency
        #: Seconds between stream events (a ``Fault.slow`` chunk delay overrides it).
        self.chunk_delay = chunk_delay
        #: If set, requests without ``Authorization: Bearer <key>`` get 401.
        self.expected_api_key = expected_api_key
        #: Scripts chat/FIM answers; None keeps the default echo.
        self.responder = responder
        #: Model ids served by ``/v1/models``.
        self.models = list(models)
        #: Dated models with aliases and deprecations (:class:`ModelSpec`); assign to change.
        self.catalog = list(catalog)
        #: Length of the vectors returned by ``/v1/embeddings``.
        self.embedding_dimensions = embedding_dimensions
        #: Log one line per request (never headers) to stderr.
        self.verbose = verbose
        #: Rate limits enforced and announced in ``x-ratelimit-*`` headers (None: none).
        self.limits = limits
        #: Answer with the dated ID an alias stands for (``response.model``), as the API does.
        self.resolve_aliases = resolve_aliases
        self._window: list[tuple[float, int]] = []  # (when, tokens) of answers, last 60 s
        self._month_tokens = 0
        self._cost_usd = 0.0
        self._unpriced: set[str] = set()
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._faults: list[tuple[str | None, Fault]] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: dict[str, tuple[str, Callable[[RecordedRequest], _Reply]]] = {
            CHAT_PATH: ("POST", self._completion),
            FIM_PATH: ("POST", self._completion),
            EMBEDDINGS_PATH: ("POST", self._embeddings),
            MODELS_PATH: ("GET", self._list_models),
        }
        #: Files, batch jobs, conversations ... and their state (``routes.Routes``).
        self._more = Routes(self)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> MistralTestServer:
        """Bind and serve in a daemon thread; returns the server itself."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPServer((self.host, self.port), self)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"mistral-test-server:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close_connections(self) -> None:
        """Hang up every open client connection (as a server ending idle keep-alive
        connections does); the server keeps accepting new ones."""
        if self._httpd is not None:
            self._httpd.close_connections()

    def stop(self) -> None:
        """Stop serving, close every connection and join the threads (idempotent)."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()  # joins the handler threads
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> MistralTestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._httpd is not None

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` has begun."""
        return self._stopping.is_set()

    @property
    def url(self) -> str:
        """Base URL to pass as the SDK's ``server_url`` (``http://127.0.0.1:PORT``)."""
        if self._httpd is None:
            raise RuntimeError("MistralTestServer is not running; call start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __repr__(self) -> str:
        where = self.url if self.running else "stopped"
        return f"<MistralTestServer {where} requests={self.count()}>"

    # -- recorded requests ------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest | None:
        """The most recent request, or None."""
        with self._lock:
            return self._requests[-1] if self._requests else None

    def count(self, path: str | None = None, *, method: str | None = None) -> int:
        """How many requests were received (optionally only for ``path`` / ``method``)."""
        with self._lock:
            return sum(
                1
                for r in self._requests
                if (path is None or r.path == path) and (method is None or r.method == method)
            )

    def clear(self) -> None:
        """Forget recorded requests and reset ``max_in_flight`` (queued faults stay)."""
        with self._lock:
            self._requests.clear()
            self._max_in_flight = self._in_flight

    def wait_for_requests(self, n: int, *, path: str | None = None, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` requests (for ``path``) arrived; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._count_locked(path) >= n, timeout)

    def _count_locked(self, path: str | None) -> int:
        return sum(1 for r in self._requests if path is None or r.path == path)

    @property
    def in_flight(self) -> int:
        """Requests being handled right now."""
        with self._lock:
            return self._in_flight

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted since the server started (keep-alive reuse shows here)."""
        return self._httpd.accepted if self._httpd is not None else 0

    @property
    def connections_open(self) -> int:
        """TCP connections open now."""
        if self._httpd is None:
            return 0
        with self._httpd.connections_lock:
            return len(self._httpd.connections)

    @property
    def max_in_flight(self) -> int:
        """The most requests handled at the same time since start or ``clear()``."""
        with self._lock:
            return self._max_in_flight

    def _begin(self, record: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._lock.notify_all()

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the server stops first; True if it is stopping."""
        return self._stopping.wait(seconds) if seconds > 0 else self._stopping.is_set()

    # -- faults -----------------------------------------------------------------------------

    def enqueue(self, *faults: Fault, path: str | None = None) -> None:
        """Queue faults, each consumed by one later request (to ``path`` only, if given)."""
        with self._lock:
            self._faults.extend((path, fault) for fault in faults)

    def fail_next(self, n: int, fault: Fault, *, path: str | None = None) -> None:
        """Queue the same fault for the next ``n`` requests (to ``path`` only, if given)."""
        self.enqueue(*([fault] * n), path=path)

    @property
    def pending_faults(self) -> int:
        """How many queued faults no request has consumed yet."""
        with self._lock:
            return len(self._faults)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for index, (wanted, fault) in enumerate(self._faults):
                if wanted is None or wanted == path:
                    del self._faults[index]
                    return fault
        return None

    # -- limits and charges -----------------------------------------------------------------

    @property
    def cost_usd(self) -> float:
        """What the answers served would cost at the packaged list prices (by the model each
        answer names); models without a price are in :attr:`unpriced_models`."""
        with self._lock:
            return self._cost_usd

    @property
    def unpriced_models(self) -> frozenset[str]:
        """Models answered that have no packaged price."""
        with self._lock:
            return frozenset(self._unpriced)

    @property
    def tokens_this_month(self) -> int:
        """Tokens served since the server started (what ``tokens_per_month`` counts)."""
        with self._lock:
            return self._month_tokens

    def _limit_headers(self, now: float) -> dict[str, str]:
        """``x-ratelimit-*`` of the limits set (caller holds the lock)."""
        limits = self.limits
        if limits is None:
            return {}
        self._window = [(t, n) for t, n in self._window if now - t < 60.0]
        used_req, used_tok = len(self._window), sum(n for _t, n in self._window)
        headers = {}
        if limits.requests_per_minute:
            headers["x-ratelimit-limit-req-minute"] = str(limits.requests_per_minute)
            left = max(0, limits.requests_per_minute - used_req)
            headers["x-ratelimit-remaining-req-minute"] = str(left)
        if limits.tokens_per_minute:
            headers["x-ratelimit-limit-tokens-minute"] = str(limits.tokens_per_minute)
            left = max(0, limits.tokens_per_minute - used_tok)
            headers["x-ratelimit-remaining-tokens-minute"] = str(left)
        if limits.tokens_per_month:
            headers["x-ratelimit-limit-tokens-month"] = str(limits.tokens_per_month)
            left = max(0, limits.tokens_per_month - self._month_tokens)
            headers["x-ratelimit-remaining-tokens-month"] = str(left)
        return headers

    def _over_limit(self, record: RecordedRequest) -> _Reply | None:
        """A 429 when a limit is used up (per month first: it is not worth retrying)."""
        limits = self.limits
        if limits is None or record.path.rstrip("/") not in _CHARGED:
            return None
        with self._lock:
            now = time.time()
            headers = self._limit_headers(now)
            if limits.tokens_per_month and self._month_tokens >= limits.tokens_per_month:
                body = {
                    "object": "error",
                    "message": "Monthly token limit exceeded for this workspace.",
                    "type": "rate_limited",
                    "code": "3505",
                }
                return _Reply(429, body, headers=headers)
            used_req = len(self._window)
            used_tok = sum(n for _t, n in self._window)
            over_req = limits.requests_per_minute and used_req >= limits.requests_per_minute
            over_tok = limits.tokens_per_minute and used_tok >= limits.tokens_per_minute
            if not (over_req or over_tok):
                return None
            oldest = self._window[0][0] if self._window else now
            headers["Retry-After"] = str(max(1, math.ceil(60.0 - (now - oldest))))
            return _Reply(429, _error_body(429), headers=headers)

    def _charge(self, record: RecordedRequest, reply: _Reply) -> None:
        """Count an answer's tokens against the limits, price it, and add the headers."""
        if record.path.rstrip("/") not in _CHARGED or not 200 <= reply.status < 300:
            return
        usage = _usage_of(reply)
        tokens = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
        model = _answer_model(reply)
        from mistral_nbenv.config.prices import packaged

        cost = packaged().cost(
            model, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        )
        with self._lock:
            now = time.time()
            self._window.append((now, tokens))
            self._month_tokens += tokens
            if cost is None:
                if model:
                    self._unpriced.add(model)
            else:
                self._cost_usd += cost
            reply.headers.update(self._limit_headers(now))

    # -- routes -----------------------------------------------------------------------------

    def _route(self, record: RecordedRequest) -> _Reply:
        path, method = record.path.rstrip("/") or "/", record.method
        if path.startswith(MODELS_PATH + "/") and method == "GET":
            return self._retrieve_model(path[len(MODELS_PATH) + 1 :])
        route = self._routes.get(path)
        if route is None:
            return self._more.route(record) or _generated(record, path)
        wanted, handler = route
        if method != wanted:
            return _Reply(405, {"detail": "Method Not Allowed"})
        if wanted == "POST" and not isinstance(record.body, dict):
            return _Reply(400, {"object": "error", "message": "Expected a JSON object body"})
        return handler(record)

    def _completion(self, record: RecordedRequest) -> _Reply:
        return self._answer(record, record.body)

    def _answer(self, record: RecordedRequest, body: dict[str, Any]) -> _Reply:
        """A chat/FIM/agents answer: scripted, tools / JSON format (routes), or the echo."""
        required = "prompt" if record.path.rstrip("/") == FIM_PATH else "messages"
        missing = [name for name in ("model", required) if name not in body]
        if missing:
            detail = [
                {"type": "missing", "loc": ["body", name], "msg": "Field required", "input": body}
                for name in missing
            ]
            return _Reply(422, {"detail": detail})
        spec = self.spec(str(body["model"]))
        if spec is not None and spec.retired():
            return self._retired(spec)
        try:
            scripted = self.responder(record) if self.responder is not None else None
        except Exception as exc:  # shown to the client instead of a dropped connection
            problem = f"testing server responder raised {exc!r}"
            return _Reply(500, {"object": "error", "message": problem, "type": "responder_error"})
        if isinstance(scripted, Mapping):
            data = dict(scripted)
            return _Reply(body=data, events=[data] if record.stream else None)
        special = scripted_message(body) if scripted is None else None
        answer = echo_answer(body) if scripted is None else str(scripted)
        if special is not None:
            answer = str(special[0].get("content") or "")
        prompt_tokens = _prompt_tokens(body)
        completion_tokens = estimate_tokens(answer)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        model = self._answered_as(str(body["model"]), spec)
        ident, created = uuid.uuid4().hex, int(time.time())
        message: dict[str, Any] = {"role": "assistant", "content": answer}
        finish = "stop"
        if special is not None:
            message, finish = special
        headers = self._deprecation_headers(spec)
        if record.stream:
            events = self._chunks(ident, created, model, answer or " ", usage)
            if finish == "tool_calls":
                events = [events[0], events[-1]]
                events[-1]["choices"][0].update(delta=message, finish_reason=finish)
            # never on a stream: the SDK's own hook would read the body to log it and fail
            return _Reply(events=events)
        return _Reply(
            headers=headers,
            body={
                "id": ident,
                "object": "chat.completion",
                "model": model,
                "created": created,
                "usage": usage,
                "choices": [
                    {
                        "index": 0,
                        "message": {"tool_calls": None, **message},
                        "finish_reason": finish,
                    }
                ],
            },
        )

    @staticmethod
    def _chunks(
        ident: str, created: int, model: str, answer: str, usage: dict[str, int]
    ) -> list[Any]:
        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }

        pieces = _split_words(answer)
        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": piece}) for piece in pieces[:-1]]
        events.append(chunk({"content": pieces[-1]}, "stop", usage=usage))
        return events

    def _embeddings(self, record: RecordedRequest) -> _Reply:
        body: dict[str, Any] = record.body
        if "model" not in body or "input" not in body:
            return _Reply(422, _error_body(422))
        spec = self.spec(str(body["model"]))
        if spec is not None and spec.retired():
            return self._retired(spec)
        inputs = body["input"]
        texts = [inputs] if isinstance(inputs, str) else [_content_text(t) for t in inputs]
        tokens = sum(estimate_tokens(t) for t in texts)
        return _Reply(
            headers=self._deprecation_headers(spec),
            body={
                "id": uuid.uuid4().hex,
                "object": "list",
                "model": self._answered_as(str(body["model"]), spec),
                "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens},
                "data": [
                    {
                        "object": "embedding",
                        "embedding": fake_embedding(text, self.embedding_dimensions),
                        "index": index,
                    }
                    for index, text in enumerate(texts)
                ],
            },
        )

    def _answered_as(self, model: str, spec: ModelSpec | None) -> str:
        """The model an answer names: the dated ID behind an alias (``resolve_aliases``)."""
        return spec.id if spec is not None and self.resolve_aliases else model

    def spec(self, model: str) -> ModelSpec | None:
        """The catalog entry ``model`` names (its ID or one of its aliases), if any."""
        for spec in self.catalog:
            if model == spec.id or model in spec.aliases:
                return spec
        return None

    @staticmethod
    def _retired(spec: ModelSpec) -> _Reply:
        instead = f" Use {spec.replacement}." if spec.replacement else ""
        message = f"Invalid model: {spec.id} was retired on {spec.deprecation}.{instead}"
        return _Reply(400, {"object": "error", "message": message, "type": "invalid_model"})

    @staticmethod
    def _deprecation_headers(spec: ModelSpec | None) -> dict[str, str]:
        if spec is None or spec.deprecation is None:
            return {}
        return {"x-model-deprecation-timestamp": spec.deprecation}

    def _model_card(self, model_id: str) -> dict[str, Any]:
        is_embed = "embed" in model_id
        is_code = "codestral" in model_id
        spec = self.spec(model_id)
        names: dict[str, Any] = {"aliases": []}
        if spec is not None:
            others = [spec.id, *spec.aliases]
            names = {
                "name": spec.id,
                "aliases": [a for a in others if a != model_id],
                "deprecation": spec.deprecation,
                "deprecation_replacement_model": spec.replacement,
            }
        return {
            "id": model_id,
            "object": "model",
            "created": 1700000000,
            "owned_by": "mistralai",
            "type": "base",
            "max_context_length": 32768,
            **names,
            "capabilities": {
                "completion_chat": not is_embed,
                "completion_fim": is_code,
                "function_calling": not is_embed,
                "fine_tuning": False,
                "vision": False,
            },
        }

    def _list_models(self, record: RecordedRequest) -> _Reply:
        return _Reply(body={"object": "list", "data": [self._model_card(m) for m in self.models]})

    def _retrieve_model(self, model_id: str) -> _Reply:
        if model_id not in self.models:
            return _Reply(404, {"detail": f"Model {model_id!r} not found"})
        return _Reply(body=self._model_card(model_id))


_CHARGED = frozenset({CHAT_PATH, FIM_PATH, EMBEDDINGS_PATH})


def _usage_of(reply: _Reply) -> dict[str, Any]:
    """The ``usage`` of an answer (a stream's: its last event's)."""
    sources = [reply.body] if reply.events is None else list(reversed(reply.events))
    for source in sources:
        if isinstance(source, Mapping) and isinstance(source.get("usage"), Mapping):
            return dict(source["usage"])
    return {}


def _answer_model(reply: _Reply) -> str | None:
    source = reply.body if reply.events is None else (reply.events or [None])[-1]
    model = source.get("model") if isinstance(source, Mapping) else None
    return model if isinstance(model, str) else None


def _generated(record: RecordedRequest, path: str) -> _Reply:
    """The long tail: a schema-valid body from the SDK's own response model."""
    asked = record.stream or "text/event-stream" in (record.header("accept") or "")
    op = generated.find(record.method, path, stream=asked)
    if op is None:
        return _Reply(404, {"detail": "Not Found"})
    try:
        return generated.body_for(op, path, stream=asked or op.stream)
    except Exception as exc:  # shown to the client: which model could not be generated
        message = f"testing server could not generate {op.qualname}: {exc!r}"
        return _Reply(501, {"object": "error", "message": message})
