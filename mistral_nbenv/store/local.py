"""The embedded stores: diskcache on local disk (shared by processes) and memory (one process).

:class:`DiskStore` keeps today's guarantees: its directory is 0700 and every file in it 0600
(values larger than SQLite's inline limit become files too, created under a private umask);
values are JSON text only, and anything else found there (a pickle, bytes that are not
UTF-8) reads as absent, never unpickled; every update runs inside one SQLite transaction,
so processes sharing the directory share one state.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mistral_nbenv._forksafe import Lock, RLock
from mistral_nbenv.store import (
    NOWAIT,
    Busy,
    Locked,
    UnreadableEntry,
    counter_value,
    warn_tampered,
)
from mistral_nbenv.store.private import make_private_dir, private_umask, tighten

if TYPE_CHECKING:
    import diskcache

__all__ = [
    "DiskStore",
    "MemoryStore",
    "close_all",
    "open_diskcache",
]

R = TypeVar("R")

#: Values up to this size stay inside SQLite (responses are typically ~1 KB).
DISK_MIN_FILE_SIZE = 4 * 1024 * 1024
#: Seconds a transaction waits for another process's before it fails (a stalled holder:
#: the rate limiter then keeps its budget in memory, with one warning).
BUSY_TIMEOUT = 60.0
#: Enforce the size limit (evict oldest entries) once every this many writes.
CULL_EVERY = 64
_LEDGER_PREFIX = "usage\0"
#: SQLite's "another connection holds the lock" codes (SQLITE_BUSY, SQLITE_LOCKED).
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

_open: dict[str, diskcache.Cache] = {}
_disk_class: type | None = None


def _json_text_disk() -> type:
    """diskcache's ``Disk``, made to read JSON text only (built on first use).

    A value stored as a pickle is never unpickled, a value file outside the cache
    directory (a planted ``filename='../../x'``) is never read, bytes that are not UTF-8
    read as absent, and a key stored pickled is never unpickled: each reads as ``None``.
    """
    global _disk_class
    if _disk_class is None:
        import diskcache
        from diskcache.core import MODE_PICKLE

        class JSONTextDisk(diskcache.Disk):
            def get(self, key: Any, raw: bool) -> Any:
                return super().get(key, raw) if raw else None

            def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
                if mode == MODE_PICKLE:
                    return None
                if filename is not None:
                    root = os.path.realpath(self._directory)
                    path = os.path.realpath(os.path.join(root, filename))
                    if not path.startswith(root + os.sep):
                        return None
                try:
                    return super().fetch(mode, filename, value, read)
                except UnicodeDecodeError:
                    return None

        _disk_class = JSONTextDisk
    return _disk_class


_open_lock = Lock()


def open_diskcache(
    directory: Path, *, size_limit: int | None = None, timeout: float | None = None
) -> diskcache.Cache:
    """Open (or reuse within this process) the diskcache at ``directory``, privately.

    ``timeout``: how long its transactions wait for another process's (default
    :data:`BUSY_TIMEOUT`); a handle with another timeout is a handle of its own.
    """
    timeout = BUSY_TIMEOUT if timeout is None else timeout
    key = f"{directory}\0{timeout!r}"
    with _open_lock:
        cache = _open.get(key)
        if cache is not None:
            if size_limit is not None and cache.size_limit != size_limit:
                cache.reset("size_limit", size_limit)
            return cache
        import diskcache

        make_private_dir(directory)
        kwargs: dict[str, Any] = {
            "disk_min_file_size": DISK_MIN_FILE_SIZE,
            "statistics": False,
            "tag_index": False,
            "eviction_policy": "least-recently-stored",
            "timeout": timeout,
            # culling on every write costs more than the write: DiskStore culls in batches
            "cull_limit": 0,
        }
        if size_limit is not None:
            kwargs["size_limit"] = size_limit
        with private_umask():
            cache = diskcache.Cache(str(directory), disk=_json_text_disk(), **kwargs)
        tighten(directory)
        _open[key] = cache
        return cache


def close_all() -> None:
    """Close every diskcache this process opened (tests). Nothing is pending: every write
    was committed before the call that made it returned."""
    with _open_lock:
        for cache in _open.values():
            with contextlib.suppress(Exception):
                cache.close()
        _open.clear()


_ABSENT = object()
#: A batch of counters on its way to the shared ledger (:meth:`DiskStore.seal`).
_BATCH_PREFIX = "usage-batch\0"


def _text(value: Any) -> str | None:
    """A stored value as JSON text, or None for anything else (never unpickled)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return None


class DiskStore:
    """:class:`~mistral_nbenv.store.KeyValue`, ``Budget`` and ``Ledger`` in one directory.

    Every method commits before it returns (write-through): another process sees a ``set``
    at once, and a process killed right after a call loses nothing that call wrote.
    """

    def __init__(
        self, directory: Path, *, size_limit: int | None = None, wait: float | None = None
    ) -> None:
        """``wait``: seconds a write waits for another process's transaction before it
        raises :class:`~mistral_nbenv.store.Locked` (default :data:`BUSY_TIMEOUT`)."""
        self.directory = Path(directory)
        self.size_limit = size_limit
        self.wait = BUSY_TIMEOUT if wait is None else min(float(wait), BUSY_TIMEOUT)
        self._db: diskcache.Cache | None = None
        # the handle that never waits, opened once an event loop has asked for it
        self._nowait: diskcache.Cache | None = None
        self._nowait_wanted = False
        self._writes = 0

    def __repr__(self) -> str:
        return f"DiskStore({str(self.directory)!r})"

    def close(self) -> None:
        """Release this thread's SQLite connections (their file descriptors); the store
        reconnects on its next use. Nothing is pending: every write was committed."""
        for handle in (self._db, self._nowait):
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.close()

    @property
    def location(self) -> str:
        """The directory."""
        return str(self.directory)

    def db(self) -> diskcache.Cache:
        """The open diskcache (opened, privately, on first use)."""
        db = self._db
        if db is None:
            db = self._db = open_diskcache(
                self.directory, size_limit=self.size_limit, timeout=self.wait
            )
        return db

    @contextlib.contextmanager
    def _writing(self) -> Iterator[diskcache.Cache]:
        """The handle for one write. It waits at most :data:`BUSY_TIMEOUT` for another
        process's transaction (then ``diskcache.Timeout``); while
        :data:`~mistral_nbenv.store.NOWAIT` is set it never waits, and raises
        :class:`~mistral_nbenv.store.Busy` (nothing changed) instead.

        Opening a handle may wait too (diskcache's own set-up), so the never-waiting one is
        opened outside the event loop: the first write a loop asks for is Busy, and its
        worker thread opens it after that write."""
        if not NOWAIT.get():
            import diskcache

            try:
                yield self.db()
            except (diskcache.Timeout, sqlite3.OperationalError) as exc:
                if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode not in _BUSY:
                    raise
                raise Locked(
                    f"{self.directory} was locked by another process for more than "
                    f"{self.wait:g} s (a stopped or hung process?)"
                ) from exc
            if self._nowait_wanted and self._nowait is None:  # right after a write: free
                self._nowait = open_diskcache(self.directory, size_limit=self.size_limit, timeout=0)
            return
        import diskcache

        if self._nowait is None:
            self._nowait_wanted = True
            raise Busy(f"{self.directory} is not open for an event loop yet")
        try:
            yield self._nowait
        except (diskcache.Timeout, sqlite3.OperationalError) as exc:
            if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode not in _BUSY:
                raise
            raise Busy(f"{self.directory} is locked by another transaction") from exc

    # -- KeyValue -------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        """The JSON text under ``key``; None when absent or expired; a value that is not
        text (not UTF-8, a pickle) raises :class:`~mistral_nbenv.store.UnreadableEntry`."""
        value = self.db().get(key, _ABSENT, retry=True)
        if value is _ABSENT:
            return None
        text = _text(value)
        if text is None:
            raise UnreadableEntry("the stored value is not UTF-8 JSON text")
        return text

    def set(self, key: str, value: str, ttl: float | None) -> None:
        """Store ``value``; every :data:`CULL_EVERY` writes, evict down to the size limit."""
        import diskcache

        with self._writing() as db, private_umask():
            db.set(key, value, expire=ttl, retry=False)
            self._writes += 1
            if self._writes % CULL_EVERY == 1:
                with contextlib.suppress(diskcache.Timeout):  # busy: the next batch evicts
                    db.cull(retry=False)

    def delete(self, key: str) -> None:
        """Remove ``key`` (absent is fine)."""
        self.db().delete(key, retry=True)

    def count(self) -> tuple[int, int]:
        """``(entries, bytes)`` after dropping expired entries."""
        db = self.db()
        db.expire(retry=True)
        return len(db), int(db.volume())

    def clear(self) -> int:
        """Remove every entry; return how many."""
        return int(self.db().clear(retry=True))

    # -- Budget ---------------------------------------------------------------------------

    def update(self, key: str, change: Callable[[str | None], tuple[str | None, R]]) -> R:
        """``change`` runs inside one SQLite transaction (no other process in between)."""
        with self._writing() as db, db.transact(retry=False):
            old = db.get(key, None, retry=False)
            new, result = change(_text(old))
            if new is not None:
                db.set(key, new, retry=False)
        return result

    # -- Ledger ---------------------------------------------------------------------------

    def add(self, bucket: str, amounts: Mapping[str, float]) -> None:
        """Add to one bucket's counters: one number per counter, incremented in place, all
        in one transaction."""
        with self._writing() as db, db.transact(retry=False):
            for name, amount in amounts.items():
                if amount:
                    db.incr(f"{_LEDGER_PREFIX}{bucket}\0{name}", amount, retry=False)

    def totals(self) -> dict[str, dict[str, float]]:
        """Every bucket's counters (a bucket an earlier release wrote as one JSON text too)."""
        db = self.db()
        out: dict[str, dict[str, float]] = {}
        for key in list(db.iterkeys()):
            if not (isinstance(key, str) and key.startswith(_LEDGER_PREFIX)):
                continue
            bucket, _, name = key[len(_LEDGER_PREFIX) :].partition("\0")
            value = db.get(key, None, retry=True)
            counters = out.setdefault(bucket, {})
            if name:
                number = counter_value(value)
                if number is None:
                    warn_tampered(self.location, "the usage ledger")
                    continue
                counters[name] = counters.get(name, 0.0) + number
            else:
                for old, amount in _counters(_text(value)).items():
                    counters[old] = counters.get(old, 0.0) + amount
        return {bucket: counters for bucket, counters in out.items() if counters}

    # -- moving counters elsewhere exactly once (a shared ledger that was down) ---------

    def seal(self, batch: str) -> bool:
        """In one transaction, move every counter into one batch named ``batch`` (kept
        until :meth:`discard`); False when there was nothing to move."""
        with self._writing() as db, db.transact(retry=False):
            moved: dict[str, dict[str, float]] = {}
            for key in list(db.iterkeys()):
                if not (isinstance(key, str) and key.startswith(_LEDGER_PREFIX)):
                    continue
                bucket, _, name = key[len(_LEDGER_PREFIX) :].partition("\0")
                number = counter_value(db.get(key, None, retry=False))
                db.delete(key, retry=False)
                if name and number:
                    counters = moved.setdefault(bucket, {})
                    counters[name] = counters.get(name, 0.0) + number
            if moved:
                db.set(f"{_BATCH_PREFIX}{batch}", json.dumps(moved), retry=False)
            return bool(moved)

    def sealed(self) -> dict[str, dict[str, dict[str, float]]]:
        """Every batch not discarded yet: ``{batch: {bucket: counters}}``."""
        db = self.db()
        out: dict[str, dict[str, dict[str, float]]] = {}
        for key in list(db.iterkeys()):
            if isinstance(key, str) and key.startswith(_BATCH_PREFIX):
                try:
                    data = json.loads(_text(db.get(key, None, retry=True)) or "{}")
                except ValueError:
                    data = {}
                out[key[len(_BATCH_PREFIX) :]] = {
                    str(b): _numbers(c) for b, c in data.items() if isinstance(c, dict)
                }
        return out

    def discard(self, batch: str) -> None:
        """Forget a batch once its counters are where they belong."""
        with self._writing() as db:
            db.delete(f"{_BATCH_PREFIX}{batch}", retry=False)


class MemoryStore:
    """The same protocols in this process's memory (no directory configured, tests)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = RLock()
        self._values: dict[str, tuple[str, float | None]] = {}
        self._clock = clock

    @property
    def location(self) -> str:
        """``memory``."""
        return "memory"

    def get(self, key: str) -> str | None:
        """The text under ``key`` unless it expired."""
        with self._lock:
            found = self._values.get(key)
            if found is None:
                return None
            if found[1] is not None and found[1] <= self._clock():
                del self._values[key]
                return None
            return found[0]

    def set(self, key: str, value: str, ttl: float | None) -> None:
        """Store ``value`` for ``ttl`` seconds."""
        with self._lock:
            self._values[key] = (value, None if ttl is None else self._clock() + ttl)

    def delete(self, key: str) -> None:
        """Remove ``key`` (absent is fine)."""
        with self._lock:
            self._values.pop(key, None)

    def count(self) -> tuple[int, int]:
        """``(entries, bytes)`` of the live values."""
        with self._lock:
            live = [k for k in list(self._values) if self.get(k) is not None]
            return len(live), sum(len(self._values[k][0].encode()) for k in live)

    def clear(self) -> int:
        """Remove everything."""
        with self._lock:
            n = len(self._values)
            self._values.clear()
            return n

    def update(self, key: str, change: Callable[[str | None], tuple[str | None, R]]) -> R:
        """``change`` runs under this store's lock."""
        with self._lock:
            new, result = change(self.get(key))
            if new is not None:
                self._values[key] = (new, None)
            return result

    def add(self, bucket: str, amounts: Mapping[str, float]) -> None:
        """Add to one bucket's counters."""
        self.update(_LEDGER_PREFIX + bucket, lambda state: (_added(state, amounts), None))

    def totals(self) -> dict[str, dict[str, float]]:
        """Every bucket's counters."""
        with self._lock:
            keys = [k for k in self._values if k.startswith(_LEDGER_PREFIX)]
            return {k[len(_LEDGER_PREFIX) :]: _counters(self.get(k)) for k in keys}


def _counters(text: str | None) -> dict[str, float]:
    """A bucket stored as one JSON text (an earlier release's form) as its counters."""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return _numbers(data)


def _numbers(data: Any) -> dict[str, float]:
    """The counters of a stored table: the values a ledger could have written, only."""
    if not isinstance(data, dict):
        return {}
    values = {str(k): counter_value(v) for k, v in data.items()}
    return {k: v for k, v in values.items() if v is not None}


def _added(state: str | None, amounts: Mapping[str, float]) -> str:
    counters = _counters(state)
    for name, amount in amounts.items():
        counters[name] = counters.get(name, 0.0) + float(amount)
    return json.dumps(counters, sort_keys=True)
