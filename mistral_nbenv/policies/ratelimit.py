"""Client-side budgets: requests/min and tokens/min shared across processes.

**The rule.** ``requests_per_minute = L`` admits up to ``L`` requests at once and never more
than ``L`` in any 60 s window; ``tokens_per_minute = T`` the same for tokens (each request
counted at its estimate — prompt characters / 4 plus ``max_tokens`` — corrected to the
response's ``usage`` by :meth:`RateLimiter.reconcile`). Admissions are counted in 1-second
slots and a slot counts until every second of it has left the window, so a request may wait
up to one second longer than an exact sliding window would make it; it never waits longer
than :data:`MAX_WAIT` (one window and one slot). Ten requests per minute means ten at once,
then the eleventh when the first has been a minute old — not one every six seconds.

**One state, one step.** The window (``{"w": [[slot, requests, tokens], ...], "until": t}``)
lives in a :class:`~mistral_nbenv.store.Budget` store: by default
``<cache_root>/budgets/<key fingerprint>`` (one SQLite transaction per step), shared by every
process using that key; with ``[E.shared]`` in Redis, where every step is one Lua script run
with Redis's clock (:data:`mistral_nbenv.store.redis.ADMIT`, the same arithmetic as
:meth:`RateLimiter._step`). Every admission and correction is committed before the call
goes on. While Redis is unreachable a host admits against its local window, at
``shared.local_share`` of the limits (the share the documentation states), never the whole.

**Waiters queue.** Within a process, the calls waiting for one budget wait in line behind
one admitter (a lock per event loop, and one for threads): only the admitter asks the
store, and when the window is full it sleeps until the slot that blocks it leaves, so the
store is asked about once per admission however many tasks wait.

**What the API says.** A per-minute limit in the ``x-ratelimit-limit-*`` headers below the
configured one becomes this limiter's, and what remains of it
(``x-ratelimit-remaining-*``) can only fill the window further (:meth:`observe`). A 429's
``Retry-After`` pauses every process and host sharing the budget (:meth:`pause`).

A state no admission could have written (tampered with, or written by something else) is
an empty window, with one warning; an earlier release's state is an empty window, silently.
A wait longer than :data:`LONG_WAIT` seconds is logged once per call at INFO level and
reported to the callbacks registered with :func:`add_wait_listener` (the notebook layer).
(Concurrency slots are :mod:`mistral_nbenv.policies.concurrency`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from mistral_nbenv._forksafe import Lock
from mistral_nbenv.store import Budget, Busy, Locked, warn_once, without_waiting
from mistral_nbenv.store.local import MemoryStore

if TYPE_CHECKING:
    from mistral_nbenv.store.shared import SharedScript

__all__ = [
    "LONG_WAIT",
    "MAX_WAIT",
    "SLOT",
    "WINDOW",
    "RateLimiter",
    "add_wait_listener",
]

log = logging.getLogger("mistral_nbenv.ratelimit")  # the name the documentation gives

#: Waits longer than this many seconds are announced (once per call).
LONG_WAIT = 1.0
#: The window the per-minute limits count in, and the width of one counted slot (seconds).
WINDOW = 60.0
SLOT = 1.0
#: No admission ever waits longer than this: one window and one slot.
MAX_WAIT = WINDOW + SLOT
_STATE_KEY = "bucket"
#: A slot this many slots ahead of the clock is another host's skew (kept where it is);
#: further ahead, the clock stepped back (its counts move to the current slot).
CLOCK_SKEW_SLOTS = 1
#: More than any slot of the largest settings holds (requests_per_minute <= 10^7 and
#: tokens_per_minute <= 10^10): a state above these is not one an admission wrote.
_MOST_REQUESTS = 1e7
_MOST_TOKENS = 1e11
WaitListener = Callable[[str, float], None]
_listeners: list[WaitListener] = []
Window = list[list[float]]  # [[slot, requests, tokens], ...] oldest first


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
    """A wait within ``[0, MAX_WAIT]`` (NaN: no wait)."""
    return min(MAX_WAIT, wait) if wait > 0 else 0.0


class _Tampered(ValueError):
    """A stored window no admission could have written."""


def _window(raw: str | None, now: float) -> tuple[Window, float]:
    """``(window, paused until)`` of a stored state, slots that left the window dropped.

    An earlier release's state (``req,tok,last``) is an empty window; anything else that is
    not a state this module writes raises :class:`_Tampered`.
    """
    if not raw:
        return [], 0.0
    if not raw.lstrip().startswith("{"):
        if raw.count(",") in (2, 3):  # the token buckets of an earlier release
            return [], 0.0
        raise _Tampered(raw[:40])
    try:
        state = json.loads(raw)
        entries, until = state["w"], float(state.get("until", 0.0))
        window: Window = []
        for entry in entries:
            slot, req, tok = (float(x) for x in entry)
            window.append([slot, req, tok])
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _Tampered(str(exc)) from None
    now_slot = math.floor(now / SLOT)
    first = now_slot - int(WINDOW / SLOT)
    kept: Window = []
    for slot, req, tok in window:
        if not all(math.isfinite(x) for x in (slot, req, tok)):
            raise _Tampered("not a number")
        if req < 0 or tok < 0 or req > _MOST_REQUESTS or tok > _MOST_TOKENS:
            raise _Tampered("out of range")
        if slot > now_slot + CLOCK_SKEW_SLOTS:
            slot = float(now_slot)  # a clock stepped back: counted as now, gone in a minute
        if slot >= first:
            kept.append([slot, req, tok])
    if not math.isfinite(until) or until < 0 or until > now + MAX_WAIT:
        raise _Tampered("pause")
    kept.sort(key=lambda e: e[0])
    return kept, until


class RateLimiter:
    """Requests/min and tokens/min of one environment (and key), optionally shared."""

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
        local_share: float = 1.0,
    ) -> None:
        self._store: Budget = store if store is not None else MemoryStore()
        self._shared = shared
        self.environment = environment
        self.configured = (float(requests_per_minute or 0), float(tokens_per_minute or 0))
        self.rpm, self.tpm = self.configured
        #: False when neither limit is set (both 0): every request is admitted at once.
        self.enabled = self.rpm > 0 or self.tpm > 0
        #: The part of the limits a host admits against its own window while the shared
        #: one (Redis) is unreachable.
        self.local_share = min(1.0, max(0.0, float(local_share))) or 1.0
        self.clock = clock
        self.sleep = sleep
        self.async_sleep = async_sleep
        self._private: MemoryStore | None = None  # while the shared state is locked
        # the line of waiters: one admitter per event loop, one among threads
        self._thread_turn = Lock()
        self._loop_turns: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = {}
        self._turns_guard = Lock()
        #: How many steps this limiter ran on its store, and how many of them were tries to
        #: be admitted (benchmarks, tests: about one try per admission, however many wait).
        self.store_calls = 0
        self.admission_tries = 0

    def __repr__(self) -> str:
        where = self._shared.location if self._shared is not None else self._store.location
        return f"RateLimiter({self.environment!r}, rpm={self.rpm:g}, tpm={self.tpm:g}, {where})"

    # -- one step of the window -------------------------------------------------------------

    def _step(
        self,
        raw: str | None,
        now: float,
        *,
        cost: float,
        admit: bool,
        share: float = 1.0,
        corrections: Sequence[Sequence[float]] = (),
        seen: tuple[float, float] = (-1.0, -1.0),
        pause: float = 0.0,
    ) -> tuple[str | None, tuple[float, float]]:
        """The state change of one admission or correction (the Lua :data:`ADMIT`'s twin):
        ``(new state, (seconds to wait, slot admitted in or -1))``."""
        now_slot = math.floor(now / SLOT)
        try:
            window, until = _window(raw, now)
        except _Tampered:
            self._warn_tampered()
            window, until = [], 0.0
        by_slot = {int(e[0]): e for e in window}
        for slot, tokens in corrections:  # a token estimate corrected (or given back)
            entry = by_slot.get(int(slot))
            if entry is not None:
                entry[2] = max(0.0, entry[2] + tokens)
        rpm, tpm = self.rpm * share, self.tpm * share
        used_r = sum(e[1] for e in window)
        used_t = sum(e[2] for e in window)
        extra_r = extra_t = 0.0
        if rpm > 0 and seen[0] >= 0:  # what the API says remains can only fill the window
            extra_r = max(0.0, (rpm - used_r) - seen[0])
        if tpm > 0 and seen[1] >= 0:
            extra_t = max(0.0, (tpm - used_t) - seen[1])
        if pause > 0:
            until = max(until, now + min(pause, WINDOW))
        wait, admitted = 0.0, -1.0
        if admit:
            wait = self._wait(window, now, cost, rpm, tpm, used_r + extra_r, used_t + extra_t)
            if until > now:
                wait = max(wait, until - now)
        if extra_r or extra_t or (admit and wait <= 0):
            current = by_slot.get(now_slot)
            if current is None:
                current = [float(now_slot), 0.0, 0.0]
                window.append(current)
            current[1] += extra_r
            current[2] += extra_t
            if admit and wait <= 0:
                current[1] += 1.0
                current[2] += cost
                admitted = float(now_slot)
        state = {"w": [[int(s), r, t] for s, r, t in window if r or t], "until": until}
        return json.dumps(state, separators=(",", ":")), (_bounded(wait), admitted)

    @staticmethod
    def _wait(
        window: Window,
        now: float,
        cost: float,
        rpm: float,
        tpm: float,
        used_r: float,
        used_t: float,
    ) -> float:
        """0 when one more request of ``cost`` tokens fits in the window; else the seconds
        until enough of its oldest slots have left it."""

        def fits(r: float, t: float) -> bool:
            return (rpm <= 0 or r + 1 <= rpm + 1e-9) and (
                tpm <= 0 or t + cost <= tpm * (1 + 1e-12) or t <= 0
            )

        if fits(used_r, used_t):
            return 0.0
        for slot, req, tok in window:
            used_r -= req
            used_t -= tok
            if fits(used_r, used_t):
                return max(0.0, (slot + 1) * SLOT + WINDOW - now)
        return MAX_WAIT

    def _warn_tampered(self) -> None:
        whose = f" of environment '{self.environment}'" if self.environment else ""
        warn_once(
            f"{self._store.location} (rate-limit state)",
            "the stored state is not one this package writes: tampered with?",
            what=f"the rate-limit state{whose}",
            then="it counts as an empty window, and the next admission writes a valid one",
            fix="Check who can write to that directory.",
        )

    # -- where the step runs ------------------------------------------------------------------

    def _args(self, **step: Any) -> list[Any]:
        """The shared script's arguments (:data:`~mistral_nbenv.store.redis.ADMIT`)."""
        seen = step.get("seen", (-1.0, -1.0))
        return [
            repr(self.rpm),
            repr(self.tpm),
            repr(float(step.get("cost", 0.0))),
            1 if step.get("admit") else 0,
            json.dumps([[int(s), float(t)] for s, t in step.get("corrections", ())]),
            repr(float(seen[0])),
            repr(float(seen[1])),
            repr(float(step.get("pause", 0.0))),
        ]

    def _run(self, **step: Any) -> tuple[float, float]:
        """One step: in Redis when shared (and up), else in the local store."""
        self.store_calls += 1
        if self._shared is not None:
            got = self._shared.run(self._args(**step))
            if got is not None:
                return _bounded(float(got[0])), float(got[1])
            step["share"] = self.local_share
        return self._local(step)

    async def _run_async(self, **step: Any) -> tuple[float, float]:
        """:meth:`_run` with the event loop free: Redis awaited, the disk in a worker thread."""
        self.store_calls += 1
        if self._shared is not None:
            got = await self._shared.run_async(self._args(**step))
            if got is not None:
                return _bounded(float(got[0])), float(got[1])
            step["share"] = self.local_share
        return await without_waiting(lambda: self._local(step))

    def _local(self, step: dict[str, Any]) -> tuple[float, float]:
        def change(raw: str | None) -> tuple[str | None, tuple[float, float]]:
            return self._step(raw, self.clock(), **step)  # the clock read inside the lock

        try:
            result: tuple[float, float] = self._store.update(_STATE_KEY, change)
            return result
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
            private: tuple[float, float] = self._private.update(_STATE_KEY, change)
            return private
        except Exception as exc:
            whose = f" of environment '{self.environment}'" if self.environment else ""
            warn_once(
                self._store.location,
                f"{type(exc).__name__}: {exc}",
                what=f"the rate-limit state{whose}",
                then="this process keeps its budget in memory, no longer shared with others",
            )
            self._store = MemoryStore()
            fallback: tuple[float, float] = self._store.update(_STATE_KEY, change)
            return fallback

    # -- public ----------------------------------------------------------------------------

    def _loop_turn(self) -> asyncio.Lock:
        """The running loop's line of waiters."""
        loop = asyncio.get_running_loop()
        with self._turns_guard:
            found = self._loop_turns.get(id(loop))
            if found is not None and found[0] is loop:
                return found[1]
            for key in [k for k, (lp, _) in self._loop_turns.items() if lp.is_closed()]:
                del self._loop_turns[key]
            turn = asyncio.Lock()
            self._loop_turns[id(loop)] = (loop, turn)
            return turn

    def _announced(self, announced: bool, started: float, wait: float) -> bool:
        """Say a call's first wait past :data:`LONG_WAIT` once; whether it has been said."""
        if not announced and (self.clock() - started) + wait > LONG_WAIT:
            _announce(self.environment, wait)
            return True
        return announced

    def acquire(self, tokens: float = 0, slots: list[int] | None = None) -> float:
        """Wait in line until one request of ``tokens`` estimated tokens fits; return the
        seconds waited. ``slots`` gets the slot it was admitted in (for :meth:`reconcile`)."""
        if not self.enabled:
            return 0.0
        started, announced, slept = self.clock(), False, False
        with self._thread_turn:
            while True:
                self.admission_tries += 1
                wait, slot = self._run(cost=tokens, admit=True)
                if wait <= 0:
                    break
                announced = self._announced(announced, started, wait)
                slept = True
                self.sleep(wait)
        if slots is not None and slot >= 0:
            slots.append(int(slot))
        return self.clock() - started if slept else 0.0

    async def acquire_async(self, tokens: float = 0, slots: list[int] | None = None) -> float:
        """Async twin of :meth:`acquire` (the event loop keeps running while waiting)."""
        if not self.enabled:
            return 0.0
        started, announced, slept = self.clock(), False, False
        async with self._loop_turn():
            while True:
                self.admission_tries += 1
                wait, slot = await self._run_async(cost=tokens, admit=True)
                if wait <= 0:
                    break
                announced = self._announced(announced, started, wait)
                slept = True
                await self.async_sleep(wait)
        if slots is not None and slot >= 0:
            slots.append(int(slot))
        return self.clock() - started if slept else 0.0

    def settle(
        self,
        slots: Sequence[int] = (),
        estimated: float = 0.0,
        actual: float | None = None,
        *,
        remaining: tuple[float | None, float | None] = (None, None),
        limits: tuple[float | None, float | None] = (None, None),
    ) -> None:
        """Everything an answer tells the budget, in one step of the store:

        * the tokens counted for the call's admissions (``slots``, one per attempt, each at
          ``estimated``) corrected to its usage (``actual``, all on the last attempt; 0
          gives every estimate back: a call that failed; None: no correction);
        * the API's own per-minute limits (``x-ratelimit-*``): ``limits`` below the
          configured ones become this limiter's (never higher ones), and what ``remaining``
          says is left can only fill the window further.
        """
        self._learn(*limits)
        if not self.enabled:
            return
        corrections: list[list[float]] = []
        if self.tpm > 0 and actual is not None and actual >= 0 and slots:
            corrections = [[s, -estimated] for s in slots[:-1]]
            corrections.append([slots[-1], actual - estimated])
            corrections = [c for c in corrections if c[1]]
        seen = (
            -1.0 if remaining[0] is None else max(0.0, remaining[0]),
            -1.0 if remaining[1] is None else max(0.0, remaining[1]),
        )
        if corrections or seen != (-1.0, -1.0):
            self._run(cost=0.0, admit=False, corrections=corrections, seen=seen)

    def reconcile(self, estimated: float, actual: float, slots: Sequence[int] = ()) -> None:
        """:meth:`settle` with the usage only (0: a failed call gives its estimates back)."""
        self.settle(slots, estimated, actual)

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
            self.rpm, self.tpm = rpm, tpm
            self.enabled = True

    def pause(self, seconds: float) -> None:
        """A 429 said to come back in ``seconds``: every process (and host) sharing this
        budget waits that long before its next admission (at most one window)."""
        if seconds > 0 and self.enabled:
            self._run(cost=0.0, admit=False, pause=seconds)
