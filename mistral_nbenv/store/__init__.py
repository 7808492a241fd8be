"""The store seam: the small protocols the cache, the rate limiter and the usage ledger use.

The response cache (:mod:`mistral_nbenv.policies.cache`), the rate limiter
(:mod:`mistral_nbenv.policies.ratelimit`) and the usage ledger see only these protocols; where the
bytes live is a store's business. :mod:`mistral_nbenv.store.local` is the embedded default
(diskcache on local disk: 0700 directories, 0600 files, JSON text only, cross-process safe
through SQLite transactions) plus an in-memory twin. A shared store for many hosts (Redis)
is :mod:`mistral_nbenv.store.redis`, implementing the same protocols (its budget is an
atomic admission script rather than ``Budget.update``: Redis runs Lua, not Python).

Every method may raise; callers treat any exception but :class:`Busy` as "store
unavailable" and degrade with one :class:`CacheUnavailableWarning` (:func:`warn_once`),
never failing the call. :class:`Busy` (only while :data:`NOWAIT` is set) means "try again
where waiting is allowed" and always propagates.
"""

from __future__ import annotations

import asyncio
import contextvars
import warnings
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

from mistral_nbenv._forksafe import Lock
from mistral_nbenv.errors import MistralEnvWarning

__all__ = [
    "NOWAIT",
    "Budget",
    "Busy",
    "CacheUnavailableWarning",
    "KeyValue",
    "Ledger",
    "warn_once",
    "without_waiting",
]

R = TypeVar("R")


class CacheUnavailableWarning(MistralEnvWarning, RuntimeWarning):
    """A store (response cache, rate-limit state) could not be used; calls go on without it."""


class Locked(Exception):
    """Another process held a store's lock for longer than this store waits (a stopped or
    hung process, most likely); nothing was changed. Callers go on without the store for
    this call, and use it again on the next."""


class UnreadableEntry(ValueError):
    """A stored value exists under a key but is not text this package wrote (not UTF-8, a
    pickle, a file outside the store): the caller drops it, with a warning."""


class Busy(Exception):
    """Another transaction holds a store now: while :data:`NOWAIT` is set, a store raises this
    at once instead of waiting, having changed nothing."""


#: Set while an event loop runs store work itself (:func:`without_waiting`): a local store
#: raises :class:`Busy` where it would wait for another process's transaction.
NOWAIT: contextvars.ContextVar[bool] = contextvars.ContextVar("mistral_nbenv_nowait", default=False)


async def without_waiting(step: Callable[[], R]) -> R:
    """Run ``step`` (one store write, or several each atomic and not yet begun) on the event
    loop when no other process holds what it touches; else in a worker thread, where it may
    wait. The loop itself never waits on a file lock, and a step costs no thread when the
    stores are free (the common case)."""
    token = NOWAIT.set(True)
    try:
        return step()
    except Busy:
        pass
    finally:
        NOWAIT.reset(token)
    return await asyncio.to_thread(step)


class KeyValue(Protocol):
    """JSON text values under string keys, each with an optional time to live."""

    @property
    def location(self) -> str:
        """Where the values live, for messages (a directory; never a password)."""
        ...

    def get(self, key: str) -> str | None:
        """The text stored under ``key``; None when absent, expired or not JSON text."""
        ...

    def set(self, key: str, value: str, ttl: float | None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (None: until evicted)."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key`` (absent is fine)."""
        ...

    def count(self) -> tuple[int, int]:
        """``(entries, bytes)`` of what is stored now (expired entries not counted)."""
        ...

    def clear(self) -> int:
        """Remove every entry; return how many."""
        ...


class Budget(Protocol):
    """An atomic read-modify-write of one small text state, across processes."""

    @property
    def location(self) -> str:
        """Where the state lives, for messages."""
        ...

    def update(self, key: str, change: Callable[[str | None], tuple[str | None, R]]) -> R:
        """Run ``change(state)`` atomically; store its new state (None: keep); return its result.

        No other process reads or writes ``key`` between the read and the write, so a
        clock read inside ``change`` is ordered with every other update.
        """
        ...


class Ledger(Protocol):
    """Usage counters that only grow: requests, tokens, hits and waits per bucket."""

    def add(self, bucket: str, amounts: Mapping[str, float]) -> None:
        """Add ``amounts`` to the counters of ``bucket`` (e.g. ``day|environment|model``)."""
        ...

    def totals(self) -> dict[str, dict[str, float]]:
        """Every bucket with its counters."""
        ...


_warned: set[str] = set()
_warned_lock = Lock()


_WITHOUT_CACHE = "continuing without a cache"


#: A usage counter above this is not one this package wrote (10^15 tokens: ~30,000 years of
#: the largest published rate limit).
MAX_COUNTER = 1e15


def counter_value(value: object) -> float | None:
    """A stored usage counter as a number, or None when no ledger could have written it
    (text, NaN, infinite, negative, absurdly large)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, bytes | str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    number = float(value)
    return number if 0.0 <= number <= MAX_COUNTER else None  # NaN fails both


def warn_tampered(location: str, what: str) -> None:
    """One warning per location: a stored value no writer of this package could have left."""
    warn_once(
        f"{location} ({what})",
        "a stored value is not one this package writes: tampered with?",
        what=what,
        then="that value is left out",
        fix="Check who can write there.",
    )


def warn_once(
    location: str,
    problem: str,
    *,
    what: str = "response cache",
    then: str = _WITHOUT_CACHE,
    fix: str = "Fix or delete that directory, or set cache.directory.",
) -> None:
    """Warn once per location and process that a store is off, and why: ``what`` (at
    ``location``) is unavailable; ``then`` says how calls go on."""
    with _warned_lock:
        if location in _warned:
            return
        _warned.add(location)
    warnings.warn(
        f"mistral_nbenv: {what} at {location} is unavailable ({problem}); {then}. {fix}".strip(),
        CacheUnavailableWarning,
        stacklevel=4,
    )
