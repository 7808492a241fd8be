"""The usage ledger's writer: what this process spent, per day, environment and model.

A :class:`UsageRecorder` counts in memory (a hit costs a lock and a few dict updates) and
adds its counts to a :class:`~mistral_nbenv.store.Ledger` in one batch at most every
:data:`FLUSH_EVERY` seconds (written by one background thread per process, so no call waits
for the ledger's transaction), when its client closes, when the process exits, and before
a usage report is read (these three write in the caller's thread, after any batch the
background thread is writing). The ledger is the shared store's (Redis, every
host adds to the same buckets) or the environment's local one
(``<cache_root>/<environment>/usage``). Buckets are ``YYYY-MM-DD|environment|model`` (UTC
days); counters are :data:`COUNTERS`. A child made by ``fork`` starts with nothing pending,
so nothing is counted twice.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Settings
    from .shared import Shared
    from .store import Ledger

__all__ = [
    "COUNTERS",
    "FLUSH_EVERY",
    "UsageRecorder",
    "bucket_parts",
    "cost_of",
    "flush_all",
    "ledger_for",
]

log = logging.getLogger(__name__)

#: Seconds between two writes of one recorder's counts (at most).
FLUSH_EVERY = 2.0
COUNTERS = (
    "requests",
    "errors",
    "hits",
    "prompt_tokens",
    "completion_tokens",
    "waits",
    "wait_seconds",
)

_recorders: weakref.WeakSet[UsageRecorder] = weakref.WeakSet()


def ledger_for(settings: Settings, shared: Shared | None) -> Ledger:
    """Where ``settings``' environment's usage goes: the shared store, else local disk."""
    from .cache import cache_dir
    from .store.local import DiskStore

    local = DiskStore(cache_dir(settings) / "usage")
    return shared.ledger(local) if shared is not None else local


def bucket_parts(bucket: str) -> tuple[str, str, str] | None:
    """``(day, environment, model)`` of a bucket name, or None if it is not one."""
    parts = bucket.split("|", 2)
    if len(parts) != 3 or len(parts[0]) != 10:
        return None
    return parts[0], parts[1], parts[2]


def cost_of(
    model: str, counters: Mapping[str, float], prices: Mapping[str, Mapping[str, float]]
) -> float | None:
    """USD for a bucket from ``prices`` (per million tokens); None when the model has none."""
    price = prices.get(model)
    if price is None:
        return None
    return (
        counters.get("prompt_tokens", 0.0) * price.get("input", 0.0)
        + counters.get("completion_tokens", 0.0) * price.get("output", 0.0)
    ) / 1e6


class UsageRecorder:
    """One environment's usage, counted here and added to a ledger in batches."""

    def __init__(
        self,
        ledger: Callable[[], Ledger],
        environment: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self.environment = environment
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, float]] = {}
        self._last_flush = clock()
        self._queued = False  # handed to the background writer, not yet taken
        self._flushing = threading.Lock()  # one batch written at a time (thread or caller)
        # The day's bucket prefix, made once a day: ``strftime`` costs more than the rest of
        # ``record`` (days are UTC, so a day is ``now // 86400``).
        self._day: tuple[float, str] = (-1.0, "")
        _recorders.add(self)

    def __repr__(self) -> str:
        return f"UsageRecorder({self.environment!r}, {len(self._pending)} pending)"

    def record(self, model: str | None, **amounts: float) -> None:
        """Count ``amounts`` for ``model`` today; write the batch when it is due."""
        now = self.clock()
        with self._lock:
            counters = self._counters(model, now)
            for name, amount in amounts.items():
                counters[name] = counters.get(name, 0.0) + amount
            due = not self._queued and now - self._last_flush >= FLUSH_EVERY
            if due:
                self._queued = True
        if due:
            _writer.submit(self)

    def answered(self, model: str | None, prompt_tokens: float, completion_tokens: float) -> None:
        """One answered request: ``record(model, requests=1, prompt_tokens=...,
        completion_tokens=...)`` without building its keywords (every call that reaches the
        API makes it)."""
        now = self.clock()
        with self._lock:
            counters = self._counters(model, now)
            counters["requests"] = counters.get("requests", 0.0) + 1.0
            counters["prompt_tokens"] = counters.get("prompt_tokens", 0.0) + prompt_tokens
            counters["completion_tokens"] = (
                counters.get("completion_tokens", 0.0) + completion_tokens
            )
            due = not self._queued and now - self._last_flush >= FLUSH_EVERY
            if due:
                self._queued = True
        if due:
            _writer.submit(self)

    def _counters(self, model: str | None, now: float) -> dict[str, float]:
        """The pending counters of ``model``'s bucket for the day of ``now``; caller holds
        ``_lock``."""
        day, prefix = now // 86400, self._day[1]
        if day != self._day[0]:
            prefix = f"{time.strftime('%Y-%m-%d', time.gmtime(now))}|{self.environment}|"
            self._day = (day, prefix)
        return self._pending.setdefault(prefix + (model or "-"), {})

    def take(self) -> dict[str, dict[str, float]]:
        """The pending counts, now no longer pending."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last_flush = self.clock()
            self._queued = False
        return pending

    def flush(self) -> None:
        """Add the pending counts to the ledger now, in this thread, after any batch being
        written (a failing ledger loses them, with a log)."""
        with self._flushing:
            pending = self.take()
            if not pending:
                return
            try:
                self._ledger().add_many(pending)
            except Exception as exc:  # usage is bookkeeping: it never fails a call
                log.warning(
                    "mistral_nbenv: %s: usage counts could not be written (%s)",
                    self.environment,
                    type(exc).__name__,
                )

    def _forget(self) -> None:
        self._pending = {}
        self._queued = False
        self._lock = threading.Lock()
        self._flushing = threading.Lock()


class _Writer:
    """The background thread that writes due batches (one per process, started on first use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._due: list[UsageRecorder] = []
        self._thread: threading.Thread | None = None

    def submit(self, recorder: UsageRecorder) -> None:
        """Have ``recorder``'s pending counts written soon."""
        with self._lock:
            self._due.append(recorder)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mistral-nbenv-usage", daemon=True
                )
                self._thread.start()
            else:
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._due:
                    self._wake.wait()
                recorder = self._due.pop(0)
            recorder.flush()  # never raises: a failing ledger is logged


_writer = _Writer()


def flush_all() -> None:
    """Write every recorder's pending counts (before a report; at exit)."""
    for recorder in list(_recorders):
        with contextlib.suppress(Exception):
            recorder.flush()


def _after_fork() -> None:
    global _writer
    _writer = _Writer()  # the parent's thread is not in the child (nor are its locks)
    for recorder in list(_recorders):
        recorder._forget()


atexit.register(flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
