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
* write-through: every admission and every correction is its own transaction, committed
  before the call goes on, so no process holds budget that the others cannot see.

The state lives in a :class:`~mistral_nbenv.store.Budget` store: by default the diskcache
directory ``<cache_root>/<environment>/ratelimit`` (each update inside diskcache's
``transact``), so every process (several notebook kernels, scripts) using the same cache
root shares one budget; without one, in memory.
The clock is read *inside* the store's atomic update, so updates from several processes are
ordered by their clock readings and no interval is credited twice: the stored time never
moves backwards; one up to ``CLOCK_SKEW`` ahead (another host's clock) is kept, one further
ahead (a clock stepped back) counts as now. A state that cannot be read (corrupt, written
by something else) is a full budget; a store that fails switches this limiter to memory
with one warning. Clock and sleep are injectable. An async admission never waits on the event
loop: it updates at once when no other transaction holds the state, and otherwise waits for
it in a worker thread (:func:`~mistral_nbenv.store.without_waiting`).

With ``[E.shared]`` (``rate_limits = true``) the same two buckets live in Redis instead and
every admission is one Lua script run with Redis's clock (:data:`mistral_nbenv.store.redis.ADMIT`,
the same arithmetic as :meth:`RateLimiter._admission`): every host using
that Redis and the same API key shares one budget. While Redis is unavailable a request is
admitted against the local budget (:mod:`mistral_nbenv.store.shared`).

(Concurrency slots are :mod:`mistral_nbenv.policies.concurrency`.)

A wait longer than :data:`LONG_WAIT` seconds is logged once per call at INFO level and
reported to the callbacks registered with :func:`add_wait_listener` (the notebook layer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from math import isfinite
from typing import TYPE_CHECKING, Any

from mistral_nbenv.store import Budget, Busy, Locked, warn_once, without_waiting
from mistral_nbenv.store.local import MemoryStore

if TYPE_CHECKING:
    from mistral_nbenv.store.shared import SharedScript

__all__ = [
    "LONG_WAIT",
    "RateLimiter",
    "add_wait_listener",
]

log = logging.getLogger("mistral_nbenv.ratelimit")  # the name the README gives

#: Waits longer than this many seconds are announced (once per call).
LONG_WAIT = 1.0
_TOKEN_BUCKET_SECONDS = 10.0
_STATE_KEY = "bucket"
_EPSILON = 1e-6
#: More than any bucket of the largest settings holds (requests_per_minute <= 10^7 and
#: tokens_per_minute <= 10^10): a state above these is not one an admission wrote.
_MOST_REQUESTS = 1e6
_MOST_TOKENS = 1e10
#: A stored time at most this far ahead of the clock is another host's skew (kept); further
#: ahead, the clock stepped back (the stored time counts as now).
CLOCK_SKEW = 1.0
#: No admission ever waits longer than this: one window of the per-minute budgets. A state
#: that would ask for more (tampered with, or written by something else) is a full budget.
MAX_WAIT = 60.0
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


def _bounded(wait: float) -> float:
    """A wait the shared script returned, within ``[0, MAX_WAIT]`` (NaN: no wait)."""
    return min(MAX_WAIT, wait) if wait > 0 else 0.0


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
        shared: SharedScript | None = None,
    ) -> None:
        self._store: Budget = store if store is not None else MemoryStore()
        self._shared = shared
        self.environment = environment
        #: False when neither budget is set (both 0): every request is admitted at once.
        self.enabled = False
        self._set_limits(float(requests_per_minute or 0), float(tokens_per_minute or 0))
        self.clock = clock
        self.sleep = sleep
        self.async_sleep = async_sleep
        #: The clock reading at which this limiter last admitted a request.
        self.admitted_at = 0.0
        self._private: MemoryStore | None = None  # while the shared state is locked

    def __repr__(self) -> str:
        where = self._shared.location if self._shared is not None else self._store.location
        return f"RateLimiter({self.environment!r}, rpm={self.rpm:g}, tpm={self.tpm:g}, {where})"

    # -- state -----------------------------------------------------------------------------

    def _update(self, change: Callable[[str | None], tuple[str | None, Any]]) -> Any:
        """One atomic update of the shared state; a failing store falls back to memory."""
        try:
            return self._store.update(_STATE_KEY, change)
        except Busy:
            raise  # to be run where waiting is allowed (store.without_waiting)
        except Locked as exc:  # a stopped process holds it: this call only, on our own
            whose = f" of environment '{self.environment}'" if self.environment else ""
            warn_once(
                f"{self._store.location} (locked)",
                str(exc),
                what=f"the rate-limit state{whose}",
                then=(
                    "calls are admitted against this process's own budget while it stays "
                    "locked, and share it again as soon as it is free"
                ),
                fix="Resume or end the process that holds it; nothing needs deleting.",
            )
            if self._private is None:
                self._private = MemoryStore()
            return self._private.update(_STATE_KEY, change)
        except Exception as exc:
            return self._fall_back(exc, change)

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

    def _parse(self, raw: str | None, now: float) -> tuple[float, float, float, float]:
        """``(requests, tokens, last, paused until)``; anything unreadable is a full budget
        as of now.

        ``last`` may be a little ahead of ``now`` (another host's clock on a shared
        directory): it is kept, so time is never credited twice.  Far ahead (a clock that
        stepped back), it counts as now: the step costs at most one refill period.

        A state no admission could have written — more than a bucket holds, a time before
        1970, a debt the buckets would take more than :data:`MAX_WAIT` to refill, a pause
        longer than that — is a full budget too, with one warning naming the environment and
        where the state is (tampered with, or written by something else): never a long sleep.
        """
        if not raw:
            return self._req_cap, self._tok_cap, now, 0.0
        try:
            parts = raw.split(",")
            if len(parts) == 3:  # written before pauses existed
                parts.append("0")
            req_text, tok_text, last_text, until_text = parts
            req, tok, last = float(req_text), float(tok_text), float(last_text)
            until = float(until_text)
        except (ValueError, TypeError, AttributeError):
            req = tok = last = until = float("nan")
        if self._plausible(req, tok, last) and isfinite(until) and until - now <= MAX_WAIT:
            if last - now > CLOCK_SKEW:
                last = now
            return min(req, self._req_cap), min(tok, self._tok_cap), last, until
        whose = f" of environment '{self.environment}'" if self.environment else ""
        warn_once(
            f"{self._store.location} (rate-limit state)",
            "the stored state is not one this package writes: tampered with?",
            what=f"the rate-limit state{whose}",
            then="it counts as a full budget, and the next admission writes a valid one",
            fix="Check who can write to that directory.",
        )
        return self._req_cap, self._tok_cap, now, 0.0

    def _plausible(self, req: float, tok: float, last: float) -> bool:
        """Whether an admission could have left this state (finite, bounded debt)."""
        if not (isfinite(req) and isfinite(tok) and isfinite(last)) or last < 0:
            return False
        # above what any bucket holds (another environment's or a learnt limit's larger
        # bucket is only clamped to this one's)
        if req > _MOST_REQUESTS or tok > _MOST_TOKENS:
            return False
        if self._req_rate > 0 and (1.0 - req) / self._req_rate > MAX_WAIT:
            return False
        return not (self._tok_rate > 0 and -tok / self._tok_rate > MAX_WAIT)

    def _shared_args(
        self,
        cost: float,
        adjust: float = 0.0,
        *,
        admit: bool = True,
        seen: tuple[float, float] = (-1.0, -1.0),
        pause: float = 0.0,
    ) -> list[Any]:
        """The shared admission script's arguments (:data:`~mistral_nbenv.store.redis.ADMIT`)."""
        return [
            repr(self._req_rate if self.rpm > 0 else 0.0),
            repr(self._req_cap),
            repr(self._tok_rate if self.tpm > 0 else 0.0),
            repr(self._tok_cap),
            repr(float(cost)),
            repr(float(adjust)),
            1 if admit else 0,
            repr(float(seen[0])),
            repr(float(seen[1])),
            repr(float(pause)),
        ]

    def _run_shared(self, args: list[Any]) -> tuple[float, float] | None:
        """The admission script in Redis: ``(wait, Redis time)``, or None while it is down."""
        assert self._shared is not None
        got = self._shared.run(args)
        return None if got is None else (float(got[0]), float(got[1]))

    def _try(self, cost: float) -> tuple[float, float]:
        """Debit the buckets if possible: ``(0, now)`` on success, else ``(seconds, now)``."""
        if self._shared is not None:
            got = self._run_shared(self._shared_args(cost))
            if got is not None:
                return _bounded(got[0]), self.clock()
        result: tuple[float, float] = self._update(self._admission(cost))
        return result

    async def _try_async(self, cost: float) -> tuple[float, float]:
        """:meth:`_try` with the event loop free: Redis awaited, the disk in a worker thread."""
        if self._shared is not None:
            reply = await self._shared.run_async(self._shared_args(cost))
            if reply is not None:
                return _bounded(float(reply[0])), self.clock()
        change = self._admission(cost)
        result: tuple[float, float] = await without_waiting(lambda: self._update(change))
        return result

    def _admission(
        self, cost: float
    ) -> Callable[[str | None], tuple[str | None, tuple[float, float]]]:
        """The state change admitting one request of ``cost`` tokens (``(wait, now)``)."""

        def change(raw: str | None) -> tuple[str | None, tuple[float, float]]:
            now = self.clock()  # inside the transaction: ordered with every other process
            req, tok, last, until = self._parse(raw, now)
            elapsed = max(0.0, now - last)
            stamp = max(now, last)  # the stored time never moves backwards
            req = min(self._req_cap, req + elapsed * self._req_rate)
            tok = min(self._tok_cap, tok + elapsed * self._tok_rate)
            wait = 0.0
            # _EPSILON: float refills land a hair below the threshold after an exact wait
            if self.rpm > 0 and req < 1.0 - _EPSILON:
                wait = (1.0 - req) / self._req_rate
            if self.tpm > 0:
                need = min(cost, self._tok_cap)
                if tok < need - _EPSILON * max(1.0, need):
                    wait = max(wait, (need - tok) / self._tok_rate)
            if until > now:  # a 429's Retry-After: every process sharing the budget waits
                wait = max(wait, until - now)
            if wait <= 0:
                if self.rpm > 0:
                    req -= 1.0
                if self.tpm > 0:
                    tok -= cost
            return f"{req!r},{tok!r},{stamp!r},{until!r}", (min(wait, MAX_WAIT), now)

        return change

    def _correction(
        self, adjust: float, seen: tuple[float, float] = (-1.0, -1.0), pause: float = 0.0
    ) -> Callable[[str | None], tuple[str, None]]:
        """The state change debiting ``adjust`` more tokens (negative: crediting them),
        lowering the buckets to what the API says remains (``seen``: requests, tokens; -1
        unknown) and pausing every admission for ``pause`` seconds."""

        def change(raw: str | None) -> tuple[str, None]:
            now = self.clock()
            req, tok, last, until = self._parse(raw, now)
            # a debt is never more than one window's refill (MAX_WAIT): a wild correction
            # (a usage far above the estimate) must not block the budget for longer
            floor = -self._tok_rate * MAX_WAIT
            tok = max(floor, min(self._tok_cap, tok - adjust))
            if self.rpm > 0 and seen[0] >= 0:
                req = min(req, seen[0])
            if self.tpm > 0 and seen[1] >= 0:
                tok = min(tok, seen[1])
            if pause > 0:
                until = max(until, now + min(pause, MAX_WAIT))
            return f"{req!r},{tok!r},{last!r},{until!r}", None

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
        started, announced, slept = self.clock(), [False], False
        while True:
            wait, now = await self._try_async(tokens)
            if self._admitted(wait, now, started, announced):
                break
            slept = True
            await self.async_sleep(wait)
        return self.clock() - started if slept else 0.0

    def reconcile(self, estimated: float, actual: float) -> None:
        """Correct the token bucket with the response's ``usage``, now (one update); an
        ``actual`` of 0 gives the whole estimate back (a request that failed)."""
        if self.tpm <= 0 or actual < 0 or actual == estimated:
            return
        adjust = actual - estimated
        self._correct(adjust)

    def observe(
        self,
        remaining_requests: float | None,
        remaining_tokens: float | None,
        *,
        limit_requests: float | None = None,
        limit_tokens: float | None = None,
    ) -> None:
        """What the API says of its own per-minute limits (``x-ratelimit-*``): a lower limit
        than the configured one becomes this limiter's (never a higher one), and what
        remains of it can only lower the buckets."""
        self._learn(limit_requests, limit_tokens)
        if not self.enabled:
            return
        seen = (
            -1.0 if remaining_requests is None else max(0.0, remaining_requests),
            -1.0 if remaining_tokens is None else max(0.0, remaining_tokens),
        )
        if seen == (-1.0, -1.0):
            return
        self._correct(0.0, seen=seen)

    def _learn(self, limit_requests: float | None, limit_tokens: float | None) -> None:
        """Adopt an API limit below the configured one (0 configured: no limit, so any)."""
        rpm, tpm = self.rpm, self.tpm
        if limit_requests and limit_requests > 0 and (rpm <= 0 or limit_requests < rpm):
            rpm = float(limit_requests)
        if limit_tokens and limit_tokens > 0 and (tpm <= 0 or limit_tokens < tpm):
            tpm = float(limit_tokens)
        if (rpm, tpm) != (self.rpm, self.tpm):
            log.info(
                "mistral_nbenv: %s: the API's limits (%g requests/min, %g tokens/min) are "
                "below the configured ones; using them",
                self.environment,
                rpm,
                tpm,
            )
            self._set_limits(rpm, tpm)

    def _set_limits(self, rpm: float, tpm: float) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.enabled = self.rpm > 0 or self.tpm > 0
        self._req_rate = self.rpm / 60.0
        self._req_cap = max(1.0, self._req_rate)
        self._tok_rate = self.tpm / 60.0
        self._tok_cap = max(1.0, self._tok_rate * _TOKEN_BUCKET_SECONDS)

    def pause(self, seconds: float) -> None:
        """A 429 said to come back in ``seconds``: every process (and host) sharing this
        budget waits that long before its next admission (at most :data:`MAX_WAIT`)."""
        if not seconds > 0:
            return
        self._correct(0.0, pause=seconds)

    def _correct(
        self, adjust: float, *, seen: tuple[float, float] = (-1.0, -1.0), pause: float = 0.0
    ) -> None:
        """One correction without an admission: in Redis when shared (and up), else here."""
        if self._shared is not None:
            args = self._shared_args(0.0, adjust, admit=False, seen=seen, pause=pause)
            if self._run_shared(args) is not None:
                return
        self._update(self._correction(adjust, seen, pause))
