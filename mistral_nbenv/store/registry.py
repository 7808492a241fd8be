"""One object per location and process: how the stores keep their per-directory state.

The write-behind (one writer thread per cache directory), the key index (one set of key
hashes per directory), the budget file (one SQLite connection per directory) and the Redis
connections (one client per URL and timeout) each keep one object per location in a
:class:`Registry`, made on first use. A forked child starts with every registry's lock
free (one another thread held at the fork would stay held); what each object holds after
a fork is its own module's business.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Registry"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_every: weakref.WeakSet[Registry[object, object]] = weakref.WeakSet()


class Registry(Generic[K, V]):
    """This process's objects by key, each made once (thread-safe)."""

    def __init__(self) -> None:
        self._items: dict[K, V] = {}
        self._lock = threading.Lock()
        _every.add(self)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The object under ``key``; ``make()`` makes it the first time."""
        with self._lock:
            found = self._items.get(key)
            if found is None:
                found = self._items[key] = make()
            return found

    def values(self) -> list[V]:
        """Every object made so far."""
        with self._lock:
            return list(self._items.values())

    def clear(self) -> list[V]:
        """Forget every object (the next :meth:`get` makes a new one); return them."""
        with self._lock:
            found = list(self._items.values())
            self._items.clear()
        return found


def _after_fork() -> None:
    """In a forked child: every registry's lock free again."""
    for registry in list(_every):
        registry._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
