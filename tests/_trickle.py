"""A raw-socket HTTP server on 127.0.0.1 that answers slowly, one piece at a time.

Each connection reads one request, then writes the pieces the ``reply`` generator yields,
``gap`` seconds apart.  The server records, per connection, how
many pieces it wrote and whether the client hung up before the reply was complete: that is
what the deadline tests assert (not a stopwatch).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

COMPLETION = {
    "id": "trickle-1",
    "object": "chat.completion",
    "model": "mistral-small-latest",
    "created": 1,
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "slow hello"},
            "finish_reason": "stop",
        }
    ],
}


def event(text: str, *, last: bool = False) -> bytes:
    """One SSE ``data:`` event of a chat stream."""
    chunk = {
        "id": "trickle-s",
        "object": "chat.completion.chunk",
        "model": "mistral-small-latest",
        "created": 1,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": text},
                "finish_reason": "stop" if last else None,
            }
        ],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def body_in_pieces(pieces: int) -> Iterator[bytes]:
    """A valid 200 JSON answer with Content-Length, its body cut into ``pieces``."""
    body = json.dumps(COMPLETION).encode()
    yield (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
    )
    size = -(-len(body) // pieces)
    for start in range(0, len(body), size):
        yield body[start : start + size]


def sse_head() -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def stream_then_keepalives(events: int, keepalives: int) -> Iterator[bytes]:
    """``events`` stream events, then SSE comments (bytes that are never an event)."""
    yield sse_head()
    for i in range(events):
        yield chunked(event(f"w{i} "))
    for _ in range(keepalives):
        yield chunked(b": keepalive\n\n")


def endless_events(events: int) -> Iterator[bytes]:
    """A stream that keeps sending events (``events`` of them) and never says [DONE]."""
    yield sse_head()
    for i in range(events):
        yield chunked(event(f"w{i} "))


@dataclass
class Connection:
    pieces_total: int = 0
    pieces_sent: int = 0
    hung_up: bool = False  # the client closed before the last piece
    finished: bool = False


@dataclass
class TrickleServer:
    """``reply()`` yields the pieces; ``gap`` seconds pass before each piece after the first."""

    reply: Callable[[], Iterator[bytes]]
    gap: float
    connections: list[Connection] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> TrickleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def wait_done(self, count: int, timeout: float = 30.0) -> list[Connection]:
        """Wait until ``count`` connections have ended (hung up or finished)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                done = [c for c in self.connections if c.hung_up or c.finished]
                if len(done) >= count:
                    return list(self.connections)
            time.sleep(0.05)
        raise AssertionError(f"only {len(done)} of {count} connections ended")

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        record = Connection()
        with self._lock:
            self.connections.append(record)
        pieces = list(self.reply())
        record.pieces_total = len(pieces)
        with conn:
            if not self._read_request(conn):
                record.hung_up = True
                return
            for i, piece in enumerate(pieces):
                if i and (self._stop.wait(self.gap) or self._client_left(conn)):
                    record.hung_up = True
                    return
                try:
                    conn.sendall(piece)
                except OSError:
                    record.hung_up = True
                    return
                record.pieces_sent = i + 1
            record.finished = True

    @staticmethod
    def _client_left(conn: socket.socket) -> bool:
        """Whether the client closed its end (it sends nothing else while it waits)."""
        conn.settimeout(0.01)
        try:
            return conn.recv(1, socket.MSG_PEEK) == b""
        except TimeoutError:
            return False
        except OSError:
            return True
        finally:
            conn.settimeout(None)

    @staticmethod
    def _read_request(conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            rest += chunk
        return True
