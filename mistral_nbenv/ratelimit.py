"""Client-side budgets: requests/min and tokens/min shared across processes, and concurrency.

**Rate semantics** (two token buckets, one state, updated in one SQLite transaction):

* requests: refills at ``requests_per_minute / 60`` per second and holds at most one
  second's worth (at least 1).  So after an idle period a short burst of
  ``max(1, rpm / 60)`` requests goes at once, then requests are spaced evenly.  Over ``T``
  seconds at most ``burst + rpm * T / 60`` requests are admitted: 120 rpm for 30 s admits
  62, whatever the number of processes sharing the budget.
* tokens: refills at ``tokens_per_minute / 60`` per second, holds at most ten seconds'
  worth.  A request is admitted when the balance covers its estimate (or the balance is
  full, so one request larger than the bucket still goes); the estimate is then debited,
  possibly into debt, which later requests wait out.  The estimate (prompt characters / 4
  plus ``max_tokens``) is corrected with the response's ``usage`` by :meth:`reconcile`.
* batching: at high request rates one transaction takes up to
  ``k = clamp(floor(rpm / 60 * 0.1), 1, 20)`` requests (about 0.1 s worth, and only what
  the buckets hold) plus as many times this request's token estimate, and hands them out
  from memory; unspent ones go back to the shared buckets on :meth:`flush` (``Client.close``)
  or with the next transaction.  Up to 1,199 rpm ``k`` is 1 and every request is its own
  transaction; above, a process holds at most 0.1 s of budget the others cannot use (and
  loses it if it exits without closing its client).

The state lives in a :class:`~mistral_nbenv.store.Budget` store: by default one row of
``<cache_root>/<environment>/ratelimit/budget.db`` (:mod:`mistral_nbenv.store.budgetfile`:
one page written per update), so every process (several notebook
kernels, scripts) using the same cache root shares one budget; without one, in memory.
The clock is read *inside* the store's atomic update, so updates from several processes are
ordered by their clock readings and no interval is credited twice: the stored time never
moves backwards; one up to ``CLOCK_SKEW`` ahead (another host's clock) is kept, one further
ahead (a clock stepped back) counts as now. A state that cannot be read (corrupt, written
by something else) is a full budget; a store that fails switches this limiter to memory
with one warning. Clock and sleep are injectable. The async admission never waits inside
SQLite: where another transaction holds the state it sleeps with ``await`` and tries again
(:meth:`RateLimiter._update_async`), so the event loop's other tasks run meanwhile.

With ``[E.shared]`` (``rate_limits = true``) the same two buckets live in Redis instead and
every admission is one Lua script run with Redis's clock (:data:`mistral_nbenv.store.redis.ADMIT`,
the same arithmetic as :meth:`RateLimiter._try_local`, without batching): every host using
that Redis and the same API key shares one budget. While Redis is unavailable a request is
admitted against the local budget (:mod:`mistral_nbenv.shared`).

(Concurrency slots are :mod:`mistral_nbenv.concurrency`.)

A wait longer than :data:`LONG_WAIT` seconds is logged once per call at INFO level and
reported to the callbacks registered with :func:`add_wait_listener` (the notebook layer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from math import isfinite
from typing import TYPE_CHECKING, Any

from .store import Budget, Busy, budgetfile, warn_once
from .store.local import MemoryStore

if TYPE_CHECKING:
    from .shared import SharedBudget

__all__ = [
    "LONG_WAIT",
    "RateLimiter",
    "add_wait_listener",
]

log = logging.getLogger(__name__)

#: Waits longer than this many seconds are announced (once per call).
LONG_WAIT = 1.0
_TOKEN_BUCKET_SECONDS = 10.0
#: At high rates one transaction takes this many seconds' worth of requests (see above).
_BATCH_SECONDS = 0.1
_MAX_BATCH = 20
_STATE_KEY = "bucket"
_EPSILON = 1e-6
#: A stored time at most this far ahead of the clock is another host's skew (kept); further
#: ahead, the clock stepped back (the stored time counts as now).
CLOCK_SKEW = 1.0
#: First and longest pause of an async admission while another transaction holds the state.
_BUSY_PAUSE = 0.001
_BUSY_PAUSE_MAX = 0.05

WaitListener = Callable[[str, float], None]
_listeners: list[WaitListener] = []


def add_wait_listener(callback: WaitListener) -> Callable[[], None]:
    """Call ``callback(environment, seconds)`` when a call must wait > 1 s; returns a remover."""
    _listeners.append(callback)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            _listeners.remove(callback)

    return remove


def _announce(environment: str, seconds: float) -> None:
    log.info(
        "mistral_nbenv: waiting %.1f s for the %s rate limit (requests/min, tokens/min)",
        seconds,
        environment or "current environment's",
    )
    for callback in list(_listeners):
        try:
            callback(environment, seconds)
        except Exception:  # a broken listener must not break the call
            log.debug("rate-limit wait listener failed", exc_info=True)


class RateLimiter:
    """Requests/min and tokens/min buckets for one environment, optionally shared on disk."""

    def __init__(
        self,
        store: Budget | None,
        *,
        requests_per_minute: float,
        tokens_per_minute: float,
        environment: str = "",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        shared: SharedBudget | None = None,
    ) -> None:
        self._store: Budget = store if store is not None else MemoryStore()
        self._shared = shared
        self.environment = environment
        self.rpm = float(requests_per_minute or 0)
        self.tpm = float(tokens_per_minute or 0)
        #: False when neither budget is set (both 0): every request is admitted at once.
        self.enabled = self.rpm > 0 or self.tpm > 0
        self.clock = clock
        self.sleep = sleep
        self.async_sleep = async_sleep
        self._req_rate = self.rpm / 60.0
        self._req_cap = max(1.0, self._req_rate)
        self._tok_rate = self.tpm / 60.0
        self._tok_cap = max(1.0, self._tok_rate * _TOKEN_BUCKET_SECONDS)
        self._batch = min(_MAX_BATCH, max(1, int(self._req_rate * _BATCH_SECONDS)))
        # requests and tokens taken from the shared buckets but not yet handed out
        self._held_req = 0
        self._held_tok = 0.0
        self._adjust = 0.0  # token corrections not yet written (folded into the next acquire)
        self._local_lock = threading.Lock()  # guards _held_req, _held_tok and _adjust
        #: The clock reading at which this limiter last admitted a request.
        self.admitted_at = 0.0

    def __repr__(self) -> str:
        where = self._shared.location if self._shared is not None else self._store.location
        return f"RateLimiter({self.environment!r}, rpm={self.rpm:g}, tpm={self.tpm:g}, {where})"

    # -- state -----------------------------------------------------------------------------

    def _update(self, change: Callable[[str | None], tuple[str | None, Any]]) -> Any:
        """One atomic update of the shared state; a failing store falls back to memory."""
        try:
            return self._store.update(_STATE_KEY, change)
        except Exception as exc:
            return self._fall_back(exc, change)

    async def _update_async(self, change: Callable[[str | None], tuple[str | None, Any]]) -> Any:
        """:meth:`_update` without blocking the event loop: where the store would wait for
        another transaction (:class:`Busy`), the task sleeps and tries again, up to
        :data:`~mistral_nbenv.store.budgetfile.BUSY_TIMEOUT` as :meth:`_update` would."""
        attempt = getattr(self._store, "try_update", None)
        if attempt is None:  # memory: never waits
            return self._update(change)
        ends, pause = None, _BUSY_PAUSE
        while True:
            try:
                return attempt(_STATE_KEY, change)
            except Busy as exc:
                now = time.monotonic()
                if ends is None:
                    ends = now + budgetfile.BUSY_TIMEOUT
                elif now >= ends:
                    return self._fall_back(TimeoutError(f"still locked: {exc}"), change)
            except Exception as exc:
                return self._fall_back(exc, change)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _BUSY_PAUSE_MAX)

    def _fall_back(
        self, exc: Exception, change: Callable[[str | None], tuple[str | None, Any]]
    ) -> Any:
        """The store failed: warn once, keep the budget in memory, apply ``change`` there."""
        whose = f" of environment '{self.environment}'" if self.environment else ""
        warn_once(
            self._store.location,
            f"{type(exc).__name__}: {exc}",
            what=f"the rate-limit state{whose}",
            then="this process keeps its budget in memory, no longer shared with others",
        )
        self._store = MemoryStore()
        return self._store.update(_STATE_KEY, change)

    def _parse(self, raw: str | None, now: float) -> tuple[float, float, float]:
        """``(requests, tokens, last)``; anything unreadable is a full budget as of now.

        ``last`` may be a little ahead of ``now`` (another host's clock on a shared
        directory): it is kept, so time is never credited twice.  Far ahead (a clock that
        stepped back), it counts as now: the step costs at most one refill period.
        """
        if raw:
            try:
                req_text, tok_text, last_text = raw.split(",")
                req, tok, last = float(req_text), float(tok_text), float(last_text)
            except (ValueError, TypeError, AttributeError):
                pass
            else:
                if isfinite(req) and isfinite(tok) and isfinite(last):
                    if last - now > CLOCK_SKEW:
                        last = now
                    return min(req, self._req_cap), min(tok, self._tok_cap), last
        return self._req_cap, self._tok_cap, now

    def _take_held(self, cost: float) -> bool:
        """Admit one request from the budget this process already holds (batching)."""
        if self._batch == 1:
            return False
        with self._local_lock:
            if self._held_req < 1 or (self.tpm > 0 and self._held_tok < cost):
                return False
            self._held_req -= 1
            if self.tpm > 0:
                self._held_tok -= cost
            return True

    def _give_back(self) -> tuple[int, float]:
        """Take what this process holds: (requests, tokens net of pending corrections)."""
        with self._local_lock:
            req, tok = self._held_req, self._held_tok - self._adjust
            self._held_req, self._held_tok, self._adjust = 0, 0.0, 0.0
        return req, tok

    def _shared_args(self, cost: float, *, admit: bool = True) -> list[float | int | str]:
        """The shared admission's arguments; takes this process's pending token corrections."""
        with self._local_lock:
            adjust, self._adjust = self._adjust, 0.0
        return [
            repr(self._req_rate if self.rpm > 0 else 0.0),
            repr(self._req_cap),
            repr(self._tok_rate if self.tpm > 0 else 0.0),
            repr(self._tok_cap),
            repr(float(cost)),
            repr(adjust),
            1 if admit else 0,
        ]

    def _unsent(self, args: list[float | int | str]) -> None:
        """The shared store did not take ``args``: its correction goes to the local budget."""
        with self._local_lock:
            self._adjust += float(args[5])

    def _try(self, cost: float) -> tuple[float, float]:
        """Debit the buckets if possible: ``(0, now)`` on success, else ``(seconds, now)``."""
        if self._shared is not None:
            args = self._shared_args(cost)
            got = self._shared.admit(args)
            if got is not None:
                return got[0], self.clock()
            self._unsent(args)
        return self._try_local(cost)

    async def _try_async(self, cost: float) -> tuple[float, float]:
        """:meth:`_try`, with the shared store's round trip awaited."""
        if self._shared is not None:
            args = self._shared_args(cost)
            got = await self._shared.admit_async(args)
            if got is not None:
                return got[0], self.clock()
            self._unsent(args)
        return await self._try_local_async(cost)

    def _try_local(self, cost: float) -> tuple[float, float]:
        """:meth:`_try` on the local (disk or memory) budget."""
        if self._take_held(cost):
            return 0.0, self.clock()
        result: tuple[float, float] = self._update(self._admission(cost))
        return result

    async def _try_local_async(self, cost: float) -> tuple[float, float]:
        """:meth:`_try_local`, the event loop free while another transaction holds the state."""
        if self._take_held(cost):
            return 0.0, self.clock()
        result: tuple[float, float] = await self._update_async(self._admission(cost))
        return result

    def _admission(
        self, cost: float
    ) -> Callable[[str | None], tuple[str | None, tuple[float, float]]]:
        """The state change admitting one request of ``cost`` tokens (``(wait, now)``)."""

        def change(raw: str | None) -> tuple[str | None, tuple[float, float]]:
            now = self.clock()  # inside the transaction: ordered with every other process
            req, tok, last = self._parse(raw, now)
            elapsed = max(0.0, now - last)
            stamp = max(now, last)  # the stored time never moves backwards
            held_req, held_tok = self._give_back()
            req = min(self._req_cap, req + elapsed * self._req_rate + held_req)
            tok = min(self._tok_cap, tok + elapsed * self._tok_rate + held_tok)
            wait = 0.0
            # _EPSILON: float refills land a hair below the threshold after an exact wait
            if self.rpm > 0 and req < 1.0 - _EPSILON:
                wait = (1.0 - req) / self._req_rate
            if self.tpm > 0:
                need = min(cost, self._tok_cap)
                if tok < need - _EPSILON * max(1.0, need):
                    wait = max(wait, (need - tok) / self._tok_rate)
            if wait > 0:
                return f"{req!r},{tok!r},{stamp!r}", (wait, now)
            if self.rpm > 0:
                req -= 1.0
            if self.tpm > 0:
                tok -= cost
            if self._batch > 1:
                extra = min(self._batch - 1, int(req + _EPSILON))
                if self.tpm > 0 and extra > 0:
                    extra = min(extra, int((tok + _EPSILON) / cost) if cost > 0 else extra)
                if extra > 0:
                    req -= extra
                    if self.tpm > 0:
                        tok -= extra * cost
                    with self._local_lock:
                        self._held_req += extra
                        self._held_tok += extra * cost if self.tpm > 0 else 0.0
            return f"{req!r},{tok!r},{stamp!r}", (0.0, now)

        return change

    # -- public ----------------------------------------------------------------------------

    def _admitted(self, wait: float, now: float, started: float, announced: list[bool]) -> bool:
        """True when admitted; announces the first long wait of a call."""
        if wait <= 0:
            self.admitted_at = now
            return True
        if not announced[0] and (now - started) + wait > LONG_WAIT:
            announced[0] = True
            _announce(self.environment, wait)
        return False

    def acquire(self, tokens: float = 0) -> float:
        """Block until one request of ``tokens`` estimated tokens fits; return seconds waited."""
        if not self.enabled:
            return 0.0
        if self._shared is None and self._take_held(tokens):  # the common case, in short
            self.admitted_at = self.clock()
            return 0.0
        started, announced, slept = self.clock(), [False], False
        while True:
            wait, now = self._try(tokens)
            if self._admitted(wait, now, started, announced):
                break
            slept = True
            self.sleep(wait)
        return self.clock() - started if slept else 0.0

    async def acquire_async(self, tokens: float = 0) -> float:
        """Async twin of :meth:`acquire` (the event loop keeps running while waiting)."""
        if not self.enabled:
            return 0.0
        if self._shared is None and self._take_held(tokens):
            self.admitted_at = self.clock()
            return 0.0
        started, announced, slept = self.clock(), [False], False
        while True:
            wait, now = await self._try_async(tokens)
            if self._admitted(wait, now, started, announced):
                break
            slept = True
            await self.async_sleep(wait)
        return self.clock() - started if slept else 0.0

    def reconcile(self, estimated: float, actual: float) -> None:
        """Correct the token bucket once the response's ``usage`` is known.

        The correction is applied in this process's next :meth:`acquire` (one transaction per
        request instead of two) or by :meth:`flush`.
        """
        if self.tpm <= 0 or actual <= 0 or actual == estimated:
            return
        with self._local_lock:
            self._adjust += actual - estimated

    def _holds(self) -> bool:
        """Whether :meth:`flush` has anything to write (corrections or held budget)."""
        return bool(self._adjust or self._held_req or self._held_tok)

    def flush(self) -> None:
        """Write pending token corrections and return held (batched) budget now."""
        if not self._holds():
            return
        if self._shared is not None:
            if self._adjust:
                args = self._shared_args(0.0, admit=False)
                if self._shared.admit(args) is None:
                    self._unsent(args)
            if not self._holds():
                return  # nothing was taken from the local budget meanwhile
        self._update(self._return_held)

    async def flush_async(self) -> None:
        """:meth:`flush` with the event loop free: the shared store's round trip awaited, and
        another process's transaction on the budget file waited for by sleeping
        (:meth:`_update_async`)."""
        if not self._holds():
            return
        if self._shared is not None:
            if self._adjust:
                args = self._shared_args(0.0, admit=False)
                if await self._shared.admit_async(args) is None:
                    self._unsent(args)
            if not self._holds():
                return
        await self._update_async(self._return_held)

    def _return_held(self, raw: str | None) -> tuple[str, None]:
        """The state change giving back what this process holds (and its corrections)."""
        req, tok, last = self._parse(raw, self.clock())
        held_req, held_tok = self._give_back()
        req = min(self._req_cap, req + held_req)
        tok = min(self._tok_cap, tok + held_tok)
        return f"{req!r},{tok!r},{last!r}", None

    def reset(self) -> None:
        """Forget the shared state (full buckets)."""
        self._give_back()
        if self._shared is not None:
            self._shared.reset()
        self._update(lambda _raw: (f"{self._req_cap!r},{self._tok_cap!r},{self.clock()!r}", None))
