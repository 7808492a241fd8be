"""Streams: the SDK's events passed through, recorded, and cached when read to the end.

A live stream holds its client's concurrency slot until it ends: read to the end, closed,
or garbage-collected; a replayed (cached) stream holds none.  Each read of the next event
has the attempt's deadline (``timeout``: the longest wait between events) and, when
``stream_timeout`` is set, the whole stream's.  The stream talks to its pipeline through
:class:`StreamOwner` only: ``finish_stream``, ``concurrency.release`` and ``fail``.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn, Protocol

from .. import _fastsdk
from . import deadline
from .request import Prepared

__all__ = ["AsyncStream", "Stream", "StreamOwner"]


class StreamOwner(Protocol):
    """What a stream needs from its pipeline."""

    concurrency: Any  # .release() gives the stream's slot back

    def finish_stream(self, call: Prepared, last_usage: Any, recorded: list[str] | None) -> None:
        """Account and cache a stream read to the end."""
        ...

    def fail(self, exc: Exception, call: Prepared) -> NoReturn:
        """Raise ``exc`` translated into the package's errors."""
        ...


class _StreamBase:
    """What both stream kinds share: pending events, recording, the end of the call."""

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
        # A live stream holds a concurrency slot until _finish (a replay holds none).
        self._done = source is None
        self.replayed = replay is not None

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

    def _finish(self, complete: bool) -> None:
        if self._done:
            return
        self._done = True
        if complete:
            self._pipeline.finish_stream(self._call, self._last_usage, self._recorded)
        self._recorded = None
        self._pipeline.concurrency.release()


class Stream(_StreamBase):
    """An iterator of the SDK's ``CompletionEvent``; recorded in the cache when read to the end."""

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._pending:
            return self._next_pending()
        if self._done:
            raise StopIteration
        scope = _fastsdk.enter()
        try:
            with deadline.within(self._call.seconds, until=self._call.ends):
                event = next(self._source)
        except StopIteration:
            self._finish(complete=True)
            raise
        except Exception as exc:
            self.close()
            self._pipeline.fail(exc, self._call)
        finally:
            _fastsdk.leave(scope)
        return self._note(event)

    def close(self) -> None:
        """Stop reading; a stream not read to the end is not cached."""
        self._pending.clear()
        if self._source is not None:
            with contextlib.suppress(Exception):
                self._source.close()
        self._finish(complete=False)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._done:
            with contextlib.suppress(Exception):
                self.close()


class AsyncStream(_StreamBase):
    """Async iterator of the SDK's ``CompletionEvent``; cached when read to the end."""

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._pending:
            return self._next_pending()
        if self._done:
            raise StopAsyncIteration
        scope = _fastsdk.enter()
        try:
            with deadline.within(self._call.seconds, until=self._call.ends):
                event = await self._source.__anext__()
        except StopAsyncIteration:
            self._finish(complete=True)
            raise
        except Exception as exc:
            await self.aclose()
            self._pipeline.fail(exc, self._call)
        finally:
            _fastsdk.leave(scope)
        return self._note(event)

    async def aclose(self) -> None:
        """Stop reading; a stream not read to the end is not cached."""
        self._pending.clear()
        if self._source is not None:
            with contextlib.suppress(Exception):
                await self._source.close()
        self._finish(complete=False)

    close = aclose

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Abandoned unclosed: give the concurrency slot back (the source cannot be awaited here).
        if not self._done:
            with contextlib.suppress(Exception):
                self._finish(complete=False)
