"""Concurrency slots: at most ``max_concurrent_requests`` calls of one client in flight.

Shared by threads and asyncio tasks on any event loop, all counted together; a released
slot is handed directly to the oldest waiter (FIFO), whether it waits in a thread or in a
coroutine on some event loop (an :class:`asyncio.Semaphore` belongs to one loop).

**No wait without a bound.**  A call waits for a slot at most its ``timeout``, then raises
:class:`~mistral_nbenv.errors.ConcurrencyLimitError`, which names the limit and how many
slots live streams hold.  A live stream holds its slot until it ends, but registers as a
:class:`Holder`: a stream not being read for longer than its own timeout gives its slot to
a call that waits for one (the stream is then closed; reading it again raises
:class:`~mistral_nbenv.errors.StreamExpiredError`).  So an abandoned ``for ev in s: break``
delays the next call by at most ``timeout``, and never forever.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from mistral_nbenv._forksafe import PerProcess
from mistral_nbenv.errors import ConcurrencyLimitError

__all__ = ["ConcurrencyLimiter", "Holder"]

#: How often a waiter looks again at holders that were busy reading when it last looked.
_RECHECK = 0.5


class Holder(Protocol):
    """A long-lived slot holder (a live stream) that can give its slot up when idle."""

    def idle_left(self, now: float) -> float | None:
        """Seconds until it may be reclaimed (<= 0: now); None while it is being read."""
        ...

    def expire(self) -> bool:
        """Give the slot back because a call needs it; False if it became busy meanwhile."""
        ...


class _AsyncWaiter:
    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def wake(self) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _ThreadWaiter:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()

    def wake(self) -> None:
        self.event.set()


class ConcurrencyLimiter:
    """At most ``limit`` calls in flight, shared by threads and asyncio tasks on any loop."""

    def __init__(self, limit: int, *, environment: str = "") -> None:
        self.limit = max(1, int(limit))
        self.environment = environment
        self._mutex = PerProcess(self._fresh)

    def _fresh(self) -> threading.Lock:
        """This process's slots, all free: a forked child holds none of its parent's calls,
        streams or waiters."""
        self._in_flight = 0
        self._waiters: collections.deque[_AsyncWaiter | _ThreadWaiter] = collections.deque()
        self._holders: weakref.WeakSet[Any] = weakref.WeakSet()
        return threading.Lock()

    @property
    def _lock(self) -> threading.Lock:
        return self._mutex.get()

    def __repr__(self) -> str:
        return f"ConcurrencyLimiter(limit={self.limit}, in_flight={self.in_flight})"

    @property
    def in_flight(self) -> int:
        """Calls currently holding a slot (live streams included)."""
        with self._lock:
            return self._in_flight

    @property
    def streams(self) -> int:
        """Slots held by live streams."""
        with self._lock:
            return len(self._holders)

    # -- holders ---------------------------------------------------------------------------

    def hold(self, holder: Holder) -> None:
        """Register the owner of a slot already taken as a reclaimable long-lived holder."""
        with self._lock:
            self._holders.add(holder)

    def forget(self, holder: Holder) -> None:
        """The holder gives its slot back itself (call :meth:`release` too)."""
        with self._lock:
            self._holders.discard(holder)

    def _reclaim(self) -> float:
        """Expire holders idle past their limit; seconds until the next one may be."""
        now = time.monotonic()
        soonest = _RECHECK
        with self._lock:
            holders = list(self._holders)
        for holder in holders:
            left = holder.idle_left(now)
            if left is None:
                continue
            if left <= 0:
                holder.expire()  # releases its slot: to the oldest waiter
            else:
                soonest = min(soonest, left)
        return soonest

    # -- taking a slot ---------------------------------------------------------------------

    def _enqueue(self, make: Callable[[], _AsyncWaiter | _ThreadWaiter]) -> Any:
        """Take a free slot (None) or queue and return a new waiter."""
        with self._lock:
            if self._in_flight < self.limit and not self._waiters:
                self._in_flight += 1
                return None
            waiter = make()
            self._waiters.append(waiter)
            return waiter

    def _give_up(self, waiter: _AsyncWaiter | _ThreadWaiter) -> bool:
        """Leave the queue; True if a slot was handed over meanwhile (the caller has it)."""
        with self._lock:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                return True
            return False

    def _too_long(self, timeout: float) -> ConcurrencyLimitError:
        streams = self.streams
        calls = max(0, self.in_flight - streams)
        where = f"environment '{self.environment}'" if self.environment else "this client"
        return ConcurrencyLimitError(
            f"No free slot for {where} within timeout={timeout:g} s: all "
            f"features.max_concurrent_requests={self.limit} are in use ({streams} by live "
            f"streams being read, {calls} by calls in progress). Read streams to the end or "
            "close them (`with client.chat.stream(...) as s:`), or raise "
            "features.max_concurrent_requests.",
            limit=self.limit,
            streams=streams,
            environment=self.environment,
        )

    def _pause(
        self,
        waiter: _AsyncWaiter | _ThreadWaiter,
        handed: Callable[[], bool],
        ends: float | None,
        timeout: float | None,
    ) -> float | None:
        """How long to wait before looking again; None once the slot is the waiter's.

        Reclaims idle streams first; past ``ends`` it leaves the queue and raises
        :class:`ConcurrencyLimitError` (unless a slot was handed over meanwhile).
        """
        pause = self._reclaim()
        if handed():
            return None
        if ends is not None:
            left = ends - time.monotonic()
            if left <= 0:
                if self._give_up(waiter):
                    return None
                raise self._too_long(float(timeout or 0))
            pause = min(pause, left)
        return pause

    def acquire(self, timeout: float | None = None) -> None:
        """Take a slot, blocking the thread at most ``timeout`` seconds while all are busy."""
        waiter: _ThreadWaiter | None = self._enqueue(_ThreadWaiter)
        if waiter is None:
            return
        ends = None if timeout is None else time.monotonic() + timeout
        while (pause := self._pause(waiter, waiter.event.is_set, ends, timeout)) is not None:
            if waiter.event.wait(pause):
                return  # the slot was handed over by release()

    async def acquire_async(self, timeout: float | None = None) -> None:
        """Take a slot, suspending the task at most ``timeout`` seconds while all are busy."""
        loop = asyncio.get_running_loop()
        waiter: _AsyncWaiter | None = self._enqueue(lambda: _AsyncWaiter(loop))
        if waiter is None:
            return
        ends = None if timeout is None else time.monotonic() + timeout
        try:
            while (pause := self._pause(waiter, waiter.future.done, ends, timeout)) is not None:
                await asyncio.wait({waiter.future}, timeout=pause)
        except asyncio.CancelledError:
            if self._give_up(waiter):
                self.release()  # release() already gave us the slot: pass it on
            raise

    def release(self) -> None:
        """Give the slot back (to the next waiter, if any)."""
        with self._lock:
            while self._waiters:
                waiter = self._waiters.popleft()
                try:
                    waiter.wake()
                    return
                except RuntimeError:  # its event loop is closed: skip it
                    continue
            self._in_flight = max(0, self._in_flight - 1)
