"""Streams: the SDK's events passed through, recorded, and cached when read to the end.

A live stream holds its client's concurrency slot until it ends: read to the end, closed,
or garbage-collected; a replayed (cached) stream holds none.  Each read of the next event
has the attempt's deadline (``timeout``: the longest wait between events) and, when
``stream_timeout`` is set, the whole stream's.  The stream talks to its pipeline through
:class:`StreamOwner` only: ``finish_stream``, ``concurrency.release`` and ``fail`` (and their
async twins, which keep the event loop free while the stores are written).
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn, Protocol

from mistral_nbenv._forksafe import Lock
from mistral_nbenv.client import deadline
from mistral_nbenv.client import sdkpatch as _fastsdk
from mistral_nbenv.client.request import Prepared
from mistral_nbenv.errors import StreamExpiredError

__all__ = ["AsyncStream", "Stream", "StreamOwner"]


class StreamOwner(Protocol):
    """What a stream needs from its pipeline."""

    concurrency: Any  # .hold(s) / .forget(s) / .release(): the stream's slot

    def finish_stream(self, call: Prepared, last_usage: Any, recorded: list[str] | None) -> None:
        """Account and cache a stream read to the end."""
        ...

    async def finish_stream_async(
        self, call: Prepared, last_usage: Any, recorded: list[str] | None
    ) -> None:
        """:meth:`finish_stream`, awaited."""
        ...

    def fail(self, exc: Exception, call: Prepared) -> NoReturn:
        """Raise ``exc`` translated into the package's errors."""
        ...

    async def fail_async(self, exc: Exception, call: Prepared) -> NoReturn:
        """:meth:`fail`, awaited."""
        ...


class _StreamBase:
    """What both stream kinds share: pending events, recording, the slot, the end of the call.

    A live stream is a :class:`~mistral_nbenv.policies.concurrency.Holder` of its slot: idle (not
    inside a read) for longer than its ``timeout``, it may be expired by a call waiting for
    a slot; ``release_slot()`` (the notebook does it for a stream left in ``Out[n]``) gives
    the slot back and keeps the stream readable.
    """

    def __init__(
        self,
        pipeline: StreamOwner,
        call: Prepared,
        *,
        replay: list[Any] | None = None,
        source: Any = None,
        first: list[Any] | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._call = call
        self._pending = collections.deque(replay if replay is not None else first or ())
        self._source = source
        self._recorded: list[str] | None = [] if call.key is not None else None
        self._last_usage: Any = None
        self._lock = Lock()
        self._reading = False
        self._expired = False
        self._active = time.monotonic()
        self._done = source is None  # no more reads from the source
        self._holding = source is not None  # a live stream holds a slot (a replay none)
        self.replayed = replay is not None
        if self._holding:
            pipeline.concurrency.hold(self)

    def __repr__(self) -> str:
        states = ((self.replayed, "replayed"), (self._expired, "expired"), (self._done, "ended"))
        state = next((name for test, name in states if test), "live")
        return f"<{type(self).__name__} {self._call.endpoint.name} {state}>"

    def _next_pending(self) -> Any:
        event = self._pending.popleft()
        return event if self.replayed else self._note(event)

    def _note(self, event: Any) -> Any:
        data = getattr(event, "data", None)
        if getattr(data, "usage", None) is not None:
            self._last_usage = data
        if self._recorded is not None:
            self._recorded.append(event.model_dump_json(by_alias=True))
        return event

    def _begin_read(self) -> bool:
        """Mark a read in progress; False when the source is finished (or expired)."""
        with self._lock:
            if self._expired:
                raise StreamExpiredError(
                    f"This {self._call.endpoint.name} stream was not read for more than "
                    f"timeout={self._call.seconds:g} s while another call waited for a "
                    "concurrency slot, so it was closed and its slot given away. Read "
                    "streams as they arrive, or close the ones you stop reading."
                )
            if self._done:
                return False
            self._reading = True
            return True

    def _end_read(self) -> None:
        with self._lock:
            self._reading = False
            self._active = time.monotonic()

    def idle_left(self, now: float) -> float | None:
        """Seconds until this stream may give its slot away (None while being read)."""
        if self._reading:
            return None
        return self._active + self._call.seconds - now

    def expire(self) -> bool:
        """Give the slot to a waiting call: called by the limiter from the waiter's thread."""
        with self._lock:
            if self._reading or self._done:
                return False
            self._expired = self._done = True
            self._recorded = None
        self._close_source_now()
        self.release_slot()
        return True

    def _close_source_now(self) -> None:
        """Close the source from any thread if it can be (only sync sources can)."""

    def release_slot(self) -> None:
        """Give the concurrency slot back now; the stream stays readable."""
        with self._lock:
            holding, self._holding = self._holding, False
        if holding:
            self._pipeline.concurrency.forget(self)
            self._pipeline.concurrency.release()

    def _ends_now(self) -> bool:
        """Mark the stream ended; whether this call did (the first to end it)."""
        with self._lock:
            if self._done:
                return False
            self._done = True
            return True

    def _finish(self, complete: bool) -> None:
        if self._ends_now() and complete:
            self._pipeline.finish_stream(self._call, self._last_usage, self._recorded)
        self._recorded = None
        self.release_slot()

    async def _finish_async(self, complete: bool) -> None:
        if self._ends_now() and complete:
            await self._pipeline.finish_stream_async(self._call, self._last_usage, self._recorded)
        self._recorded = None
        self.release_slot()


class Stream(_StreamBase):
    """An iterator of the SDK's ``CompletionEvent``; recorded in the cache when read to the end."""

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._pending:
            return self._next_pending()
        if not self._begin_read():
            raise StopIteration
        scope = _fastsdk.SCOPE.set(True)
        try:
            with deadline.within(self._call.seconds, until=self._call.ends):
                event = next(self._source)
        except StopIteration:
            self._end_read()
            self._finish(complete=True)
            raise
        except Exception as exc:
            self._end_read()
            self.close()
            self._pipeline.fail(exc, self._call)
        finally:
            _fastsdk.SCOPE.reset(scope)
        self._end_read()
        return self._note(event)

    def _close_source_now(self) -> None:
        if self._source is not None:
            with contextlib.suppress(Exception):
                self._source.close()

    def close(self) -> None:
        """Stop reading; a stream not read to the end is not cached."""
        self._pending.clear()
        self._close_source_now()
        self._finish(complete=False)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self._holding or not self._done:
            with contextlib.suppress(Exception):
                self.close()


class AsyncStream(_StreamBase):
    """Async iterator of the SDK's ``CompletionEvent``; cached when read to the end."""

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._pending:
            return self._next_pending()
        try:
            reading = self._begin_read()
        except StreamExpiredError:
            await self._close_expired()  # expired from another thread: closed here
            raise
        if not reading:
            raise StopAsyncIteration
        scope = _fastsdk.SCOPE.set(True)
        try:
            with deadline.within(self._call.seconds, until=self._call.ends):
                event = await self._source.__anext__()
        except StopAsyncIteration:
            self._end_read()
            await self._finish_async(complete=True)
            raise
        except Exception as exc:
            self._end_read()
            await self.aclose()
            await self._pipeline.fail_async(exc, self._call)
        finally:
            _fastsdk.SCOPE.reset(scope)
        self._end_read()
        return self._note(event)

    async def _close_expired(self) -> None:
        """Close the source (once); an expired async stream's is closed on its next use."""
        source, self._source = self._source, None
        if source is not None:
            with contextlib.suppress(Exception):
                await source.close()

    async def aclose(self) -> None:
        """Stop reading; a stream not read to the end is not cached."""
        self._pending.clear()
        await self._close_expired()
        await self._finish_async(complete=False)

    close = aclose

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Abandoned unclosed: give the concurrency slot back (the source cannot be awaited here).
        if self._holding or not self._done:
            with contextlib.suppress(Exception):
                self._finish(complete=False)
