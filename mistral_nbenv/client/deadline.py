"""``timeout`` as a deadline: no socket operation waits past the current attempt's end.

httpx applies its timeout to each socket operation, so a server that trickles a body one
byte per second never trips a 2 s timeout.  This module wraps the network backend of the
HTTP clients the SDK uses: every connect, read and write is given ``min(its own timeout,
time left until the deadline)``, and one that starts after the deadline fails at once
with the same ``httpcore2`` timeout error a silent server gives (so retries and error
messages are unchanged).

The deadline lives in a context variable, set by the pipeline around each attempt and
each stream read (:func:`within`): sync calls read in the caller's thread and async calls
in the caller's task, so the variable is visible exactly where the reads happen.  Outside
:func:`within` (a user's own ``client.raw`` calls) nothing changes.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import select
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["DEADLINE", "install", "remaining", "within"]

log = logging.getLogger("mistral_nbenv.client")

#: ``time.monotonic()`` value after which the current attempt's socket operations fail.
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "mistral_nbenv_deadline", default=None
)


@contextlib.contextmanager
def within(seconds: float | None, *, until: float | None = None) -> Iterator[float | None]:
    """Run the block with a deadline ``seconds`` from now (and no later than ``until``)."""
    ends = None if seconds is None else time.monotonic() + seconds
    if until is not None:
        ends = until if ends is None else min(ends, until)
    token = DEADLINE.set(ends)
    try:
        yield ends
    finally:
        DEADLINE.reset(token)


def remaining() -> float | None:
    """Seconds left before the current deadline (None when there is none)."""
    ends = DEADLINE.get()
    return None if ends is None else ends - time.monotonic()


_CONNECT, _READ, _WRITE = 0, 1, 2


def _bounded(timeout: float | None, operation: int) -> float | None:
    """The operation's timeout cut to the time left; past the deadline, its timeout error now."""
    ends = DEADLINE.get()
    if ends is None:
        return timeout
    left = ends - time.monotonic()
    if left <= 0:
        raise _errors()[operation]("deadline of this attempt reached (mistral_nbenv `timeout`)")
    return left if timeout is None else min(timeout, left)


def _errors() -> tuple[type[Exception], type[Exception], type[Exception]]:
    """httpcore2's own timeout errors, by operation (what a silent server raises)."""
    import httpcore2

    return httpcore2.ConnectTimeout, httpcore2.ReadTimeout, httpcore2.WriteTimeout


class _Stream:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = self._inner.read(max_bytes, _bounded(timeout, _READ))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, _WRITE))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _Stream:
        bounded = _bounded(timeout, _CONNECT)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, **options: Any
    ) -> _Stream:
        bounded = _bounded(timeout, _CONNECT)
        return _Stream(self._inner.connect_tcp(host, port, bounded, **options))

    def connect_unix_socket(self, path: str, timeout: float | None = None, **options: Any) -> Any:
        bounded = _bounded(timeout, _CONNECT)
        return _Stream(self._inner.connect_unix_socket(path, bounded, **options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncStream:
    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._socket: Any = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = await self._inner.read(max_bytes, _bounded(timeout, _READ))
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, _bounded(timeout, _WRITE))

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _AsyncStream:
        bounded = _bounded(timeout, _CONNECT)
        return _AsyncStream(await self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self._readable()
        return self._inner.get_extra_info(info)

    def _readable(self) -> bool:
        """Whether the idle connection's socket has bytes (or EOF) waiting. The pool asks
        this of every idle connection each time it hands one out or takes one back (about
        a hundred times per request at a cap of 100), and anyio builds its whole attribute
        table to find the socket each time: here the socket is looked up once per
        connection, and the probe is the same zero-timeout poll httpcore makes."""
        if self._socket is None:
            self._socket = self._inner.get_extra_info("socket")
        fd = -1 if self._socket is None else self._socket.fileno()
        if fd < 0 or not hasattr(select, "poll"):
            return bool(self._inner.get_extra_info("is_readable"))
        probe = select.poll()
        probe.register(fd, select.POLLIN)
        return bool(probe.poll(0))


class _AsyncBackend:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, **options: Any
    ) -> _AsyncStream:
        bounded = _bounded(timeout, _CONNECT)
        return _AsyncStream(await self._inner.connect_tcp(host, port, bounded, **options))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, **options: Any
    ) -> _AsyncStream:
        bounded = _bounded(timeout, _CONNECT)
        return _AsyncStream(await self._inner.connect_unix_socket(path, bounded, **options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def install(http_client: Any, *, is_async: bool) -> bool:
    """Wrap the network backend of every connection pool of an ``httpx2`` client.

    Returns False (and logs one debug line) when an ``httpx2``/``httpcore2`` release lays
    its pools out differently: the client then keeps httpx's per-operation timeout.
    """
    wrapper = _AsyncBackend if is_async else _Backend
    transports = [getattr(http_client, "_transport", None)]
    transports += list(getattr(http_client, "_mounts", {}).values())
    wrapped = 0
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is None:
            continue
        if not isinstance(backend, wrapper):
            pool._network_backend = wrapper(backend)  # type: ignore[union-attr]
        wrapped += 1
    if not wrapped:
        log.debug("mistral_nbenv: httpx2 pools not found; timeout stays per socket operation")
    return bool(wrapped)
