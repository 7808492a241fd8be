"""Write-behind: a :class:`~mistral_nbenv.store.KeyValue` whose ``set`` returns at once.

A cache miss used to end with one SQLite transaction on the caller's path (~0.2 ms of a
~2.5 ms loopback call). :class:`WriteBehind` keeps the value in a pending map and one
writer thread per store writes the pending values, in batches, in one transaction each;
the caller goes on at once. What stays true:

* this process reads its own writes: there is one ``WriteBehind`` per location in a
  process (:func:`write_behind`), so every client on that directory shares its pending
  map, which :meth:`WriteBehind.get` reads first; ``delete``, ``count`` and ``clear``
  flush before they act;
* nothing is lost at the end: :meth:`WriteBehind.flush` (called by ``close``, at
  interpreter exit, and by ``count``/``clear``) writes what is pending in the caller's
  thread; a forked child starts with nothing pending (the parent writes its own);
* another process sees an entry once it is written (normally within a millisecond or two);
  until then it misses and asks the API itself, as it would have a moment earlier;
* a failed write warns once (:func:`~mistral_nbenv.store.warn_once`) and drops the batch;
  the next ``set`` then raises, so the response cache turns itself off as for any store
  failure. A cache entry is never worth failing a call for.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from . import KeyValue, warn_once
from .registry import Registry

__all__ = ["WriteBehind", "flush_all", "write_behind"]

#: Most values written in one transaction.
BATCH = 256
#: The writer waits this long after a first pending value, collecting more, before it
#: writes: one short transaction per interval instead of a thread competing for the GIL
#: with the caller on every call.
DELAY = 0.05

_instances: Registry[str, WriteBehind] = Registry()
#: Every WriteBehind of this process, registered or not: a forked child resets them all.
_every: weakref.WeakSet[WriteBehind] = weakref.WeakSet()


def write_behind(
    inner: Any, *, write_many: Callable[[list[tuple[str, str, float | None]]], None] | None = None
) -> WriteBehind:
    """This process's :class:`WriteBehind` for ``inner``'s location (made on first use)."""
    return _instances.get(inner.location, lambda: WriteBehind(inner, write_many=write_many))


class WriteBehind:
    """``inner`` with ``set`` moved off the caller's path (see the module docstring)."""

    def __init__(
        self,
        inner: Any,
        *,
        write_many: Callable[[list[tuple[str, str, float | None]]], None] | None = None,
    ) -> None:
        self.inner: KeyValue = inner
        #: Why a background write failed (then ``set`` raises), else empty.
        self.failure = ""
        #: ``write_many(items)`` stores a batch in one transaction (default: one ``set`` each).
        self._write_many = write_many or self._one_by_one
        self._reset()
        _every.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._writing = threading.Lock()  # one batch written at a time (thread or flush)
        self._pending: dict[str, tuple[str, float | None]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"WriteBehind({self.inner!r}, pending={len(self._pending)})"

    @property
    def location(self) -> str:
        """The inner store's location."""
        return self.inner.location

    # -- KeyValue -------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        """A pending value first, else the inner store's."""
        with self._lock:
            found = self._pending.get(key)
        return found[0] if found is not None else self.inner.get(key)

    def set(self, key: str, value: str, ttl: float | None) -> None:
        """Queue ``value``; the writer thread stores it."""
        if self.failure:
            raise OSError(f"an earlier write to {self.location} failed ({self.failure})")
        with self._lock:
            if self._closed:
                closed = True
            else:
                closed = False
                self._pending[key] = (value, ttl)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name=f"mistral-nbenv-writer:{self.location}", daemon=True
                    )
                    self._thread.start()
                elif len(self._pending) == 1:
                    self._wake.notify()  # the first of a batch wakes the writer
        if closed:  # after close: write through
            self.inner.set(key, value, ttl)

    def delete(self, key: str) -> None:
        """Drop ``key`` (pending or stored)."""
        with self._lock:
            self._pending.pop(key, None)
        self.flush()
        self.inner.delete(key)

    def count(self) -> tuple[int, int]:
        """The inner store's count, after every pending write of this location."""
        self.flush()
        return self.inner.count()

    def clear(self) -> int:
        """Flush, then clear the inner store."""
        self.flush()
        return self.inner.clear()

    # -- writing --------------------------------------------------------------------------

    def _take(self) -> list[tuple[str, str, float | None]]:
        """Up to :data:`BATCH` pending items (caller holds ``_lock``); they stay readable in
        the map until written."""
        items = []
        for key, (value, ttl) in self._pending.items():
            items.append((key, value, ttl))
            if len(items) >= BATCH:
                break
        return items

    def _write(self, items: list[tuple[str, str, float | None]]) -> None:
        """Store ``items``, then forget those not replaced meanwhile (caller holds ``_writing``)."""
        try:
            self._write_many(items)
        except Exception as exc:  # reported, batch dropped: a cache write never fails a call
            self.failure = f"{type(exc).__name__}: {exc}"
            warn_once(self.location, self.failure)
        with self._lock:
            for key, value, ttl in items:
                if self._pending.get(key) == (value, ttl):
                    del self._pending[key]

    def _one_by_one(self, items: list[tuple[str, str, float | None]]) -> None:
        for key, value, ttl in items:
            self.inner.set(key, value, ttl)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if self._closed and not self._pending:
                    self._thread = None
                    return
                if not self._closed:
                    self._wake.wait(DELAY)  # gather a batch (a close wakes it at once)
            with self._writing:
                with self._lock:
                    items = self._take()
                if items:
                    self._write(items)

    def flush(self) -> None:
        """Write everything pending now, in this thread."""
        while True:
            with self._writing:
                with self._lock:
                    items = self._take()
                if not items:
                    return
                self._write(items)

    def close(self) -> None:
        """Flush and stop the writer thread (later writes go straight through)."""
        self.flush()
        with self._lock:
            self._closed = True
            self._wake.notify()


def flush_all() -> None:
    """Flush every write-behind store of this process (at exit; before a report)."""
    for store in _instances.values():
        store.flush()  # a failed write warns, never raises


def _after_fork() -> None:
    """In a forked child: nothing pending (the parent writes its own), no writer thread."""
    for store in list(_every):
        store._reset()  # its locks may have been held by the parent's writer thread


atexit.register(flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
