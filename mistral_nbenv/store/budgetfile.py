"""The rate limit's shared state on local disk: one small SQLite table, one page per update.

The budget was kept in a diskcache directory like the response cache. There, diskcache's
``set`` maintains its indexes and the size counters, so each commit of the limiter's update
(read the bucket, compute, write it back, in one transaction) wrote three pages to the
WAL. The limiter makes that update for every request below 1,200 requests per minute
(above, once per batch), on the caller's path. Here the state is one
row of a ``WITHOUT ROWID`` table, and an update is ``BEGIN IMMEDIATE``, one ``SELECT``, one
``INSERT OR REPLACE`` and ``COMMIT``: one page. A whole admission went from ~0.13 ms to
~0.04 ms (benchmark row 5c). It is plain :mod:`sqlite3` (the library under diskcache), for
this one table only.

What stays as it was:

* every update is one ``BEGIN IMMEDIATE`` transaction, so processes sharing the directory
  share one state and a clock read inside the change is ordered with theirs;
* the directory is 0700 and the database 0600 (SQLite gives its ``-wal`` and ``-shm``
  files the database's mode); values are text, and anything else reads as absent;
* a failure (a damaged file, a lock held past :data:`BUSY_TIMEOUT`) raises, and the limiter
  falls back to memory with one warning;
* a forked child opens its own connection (SQLite connections must not cross a fork); the
  parent's is kept, never closed by the child.

An event loop must not wait inside SQLite: :meth:`BudgetFile.try_update` is the same update
that raises :class:`Busy` at once where :meth:`~BudgetFile.update` would wait for another
process's (or thread's) transaction, so the async limiter sleeps with ``await`` and tries
again, and the loop's other tasks run meanwhile.

The file is ``budget.db``; an older mistral_nbenv kept this state in ``cache.db`` next to
it. The two do not share a budget, so hosts sharing a directory should run one version.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from . import Busy
from .private import make_private_dir, private_umask, tighten
from .registry import Registry

__all__ = ["BUSY_TIMEOUT", "DATABASE", "BudgetFile", "budget_file", "close_all"]

R = TypeVar("R")

#: The database's name inside the directory.
DATABASE = "budget.db"
#: Seconds an update waits for another process's transaction before it fails.
BUSY_TIMEOUT = 60.0

_instances: Registry[str, BudgetFile] = Registry()
#: Every BudgetFile of this process, in the registry or not (made directly, or forgotten by
#: :func:`close_all` while a limiter still holds it): a forked child resets them all.
_every: weakref.WeakSet[BudgetFile] = weakref.WeakSet()
#: Connections inherited across a fork: kept so that the child never closes them.
_inherited: list[sqlite3.Connection] = []


def budget_file(directory: Path) -> BudgetFile:
    """This process's :class:`BudgetFile` for ``directory`` (made on first use)."""
    return _instances.get(str(directory), lambda: BudgetFile(Path(directory)))


class BudgetFile:
    """A :class:`~mistral_nbenv.store.Budget` in ``<directory>/budget.db`` (see the module)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._patient = True  # the open connection's busy timeout: _busy_ms(self._patient)
        _every.add(self)

    def __repr__(self) -> str:
        return f"BudgetFile({str(self.directory)!r})"

    @property
    def location(self) -> str:
        """The directory."""
        return str(self.directory)

    def update(self, key: str, change: Callable[[str | None], tuple[str | None, R]]) -> R:
        """``change`` runs inside one SQLite transaction (no other process in between)."""
        return self._update(key, change, patient=True)

    def try_update(self, key: str, change: Callable[[str | None], tuple[str | None, R]]) -> R:
        """:meth:`update`, or :class:`Busy` at once (``change`` not run) where it would wait."""
        return self._update(key, change, patient=False)

    def _update(
        self, key: str, change: Callable[[str | None], tuple[str | None, R]], *, patient: bool
    ) -> R:
        """One ``BEGIN IMMEDIATE`` transaction: read ``key``, apply ``change``, write its new
        value, rolled back on any failure. Not ``patient``: :class:`Busy` where it would wait
        (for this file's lock in another thread, or another connection's transaction)."""
        if not self._lock.acquire(blocking=patient):
            raise Busy(f"{self.location}: in use by another thread of this process")
        try:
            db = self._db if self._db is not None else self._open(patient=patient)
            if self._patient is not patient:  # the other kind of caller used it last
                db.execute(f"PRAGMA busy_timeout = {_busy_ms(patient)}")
                self._patient = patient
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if patient or not _locked(exc):
                    raise
                raise Busy(f"{self.location}: {exc}") from None
            try:
                row = db.execute("SELECT value FROM budget WHERE key = ?", (key,)).fetchone()
                old = row[0] if row is not None and isinstance(row[0], str) else None
                new, result = change(old)
                if new is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO budget (key, value) VALUES (?, ?)", (key, new)
                    )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
            return result
        finally:
            self._lock.release()

    def _open(self, *, patient: bool = True) -> sqlite3.Connection:
        """Connect (creating the directory 0700 and the database 0600); caller holds the lock.
        ``patient=False``: :class:`Busy` where the set-up would wait for another process."""
        make_private_dir(self.directory)
        with private_umask():
            db = sqlite3.connect(
                str(self.directory / DATABASE),
                timeout=_busy_ms(patient) / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                db.execute("PRAGMA synchronous = NORMAL")
                _set_up(db, patient=patient)
            except BaseException:
                db.close()
                raise
        tighten(self.directory)  # a database from before, made with a looser mode
        self._db, self._patient = db, patient
        return db

    def close(self) -> None:
        """Close the connection (the next update opens it again)."""
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()


def _busy_ms(patient: bool) -> int:
    """The connection's busy timeout: :data:`BUSY_TIMEOUT` for a patient caller, else none."""
    return int(BUSY_TIMEOUT * 1000) if patient else 0


def _locked(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite answered that another connection holds the lock (BUSY or LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # raised without a code (not by SQLite itself): its message
        return "locked" in str(exc)
    return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)  # (extended codes)


def _set_up(db: sqlite3.Connection, *, patient: bool = True) -> None:
    """WAL mode and the table, waiting (up to :data:`BUSY_TIMEOUT`) for other processes
    doing the same: switching a new database to WAL answers "database is locked" at once,
    without SQLite's busy wait, when another process holds it (processes starting together
    on a fresh directory). diskcache retries its own set-up the same way. Not ``patient``:
    :class:`Busy` instead of waiting."""
    ends = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS budget"
                " (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID"
            )
            return
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
            if not patient:
                raise Busy(f"setting up {DATABASE}: {exc}") from None
            if time.monotonic() > ends:
                raise
            time.sleep(0.001)


def close_all() -> None:
    """Close every budget file's connection in this process and forget them."""
    for budget in _instances.clear():
        budget.close()


def _after_fork() -> None:
    """In a forked child: fresh locks, and no connection of the parent's used or closed."""
    for budget in list(_every):
        budget._lock = threading.Lock()
        if budget._db is not None:
            _inherited.append(budget._db)
            budget._db = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
