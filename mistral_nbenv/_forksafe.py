"""Per-process state: what a forked child must never inherit, made afresh on first use there.

The rule is diskcache's (``Cache._con``): one pid check where the state is taken, not a fork
hook per module. A :class:`PerProcess` value (an HTTP client, a slot count, a table of open
handles) is rebuilt by its factory the first time it is used in a process other than the
one that built it; a :class:`Lock` is a :class:`PerProcess` lock, so a lock that another
thread of the parent held at the moment of ``fork`` is never held in the child.

The only fork hook of the package is here: it renews the one guard lock that makes the
rebuild itself safe when a child's own threads reach it at the same time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Lock", "PerProcess", "RLock"]

T = TypeVar("T")

_guard = threading.Lock()


def _renew_guard() -> None:
    global _guard
    _guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_guard)


class PerProcess(Generic[T]):
    """A value of this process: :meth:`get` builds a new one in a forked child."""

    __slots__ = ("_factory", "_pid", "_value")

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: T = factory()
        self._pid = os.getpid()

    def get(self) -> T:
        """This process's value (built on first use after a fork)."""
        pid = os.getpid()
        if self._pid != pid:
            with _guard:
                if self._pid != pid:
                    self._value = self._factory()
                    self._pid = pid
        return self._value


class Lock:
    """A ``threading.Lock`` that a forked child never inherits held."""

    __slots__ = ("_lock",)
    _kind: Callable[[], Any] = threading.Lock

    def __init__(self) -> None:
        self._lock: PerProcess[Any] = PerProcess(type(self)._kind)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock (this process's)."""
        return bool(self._lock.get().acquire(blocking, timeout))

    def release(self) -> None:
        """Give the lock back."""
        self._lock.get().release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class RLock(Lock):
    """A ``threading.RLock`` that a forked child never inherits held."""

    __slots__ = ()
    _kind = threading.RLock
