"""Which keys a response-cache directory holds, known in memory, so a miss skips SQLite.

A cache miss used to cost one SQLite lookup: about 45 us of the wrapper's ~100 us on a
~0.65 ms loopback call (benchmark row 2b), the largest single cost it adds. A
:class:`Presence` keeps, per directory and process, the ``hash()`` of every key stored
there. A key whose hash is missing is certainly not stored, as long as nothing was added
since the set was read; a key whose hash is there (or any doubt) is looked up in SQLite as
before.

Kept true across processes:

* every write that can add keys (``DiskStore.set``, ``set_many``, ``update``, ``add_many``)
  ends, after its commit, with :meth:`Presence.signal`: a fresh random value in
  ``presence``, an 8-byte file (0600) in the directory that every process maps into memory.
  The first reader creates that file; until one has, there is no one to tell and a write
  leaves it alone (so directories only written to, the rate limit's and the usage ledger's,
  never get one): the file is created before that reader reads any row, so a commit that
  found no file is among the rows it reads;
* before it answers, a reader compares that value with the one it read last (a memory read,
  no system call). When it differs, it reads the rows added since (``rowid`` above the
  highest it has read) and only then answers. It reads the value *before* the rows, so
  every commit signalled by the value it saw is among the rows it reads;
* a process that reads the directory catches up right after signalling its own write, in
  the writing thread (the write-behind's, off the caller's path), by the same steps: so its
  next lookup stays in memory instead of reading its own rows back from SQLite;
* deletions need nothing: a hash left behind only sends a lookup to SQLite;
* the processes share one host (a local disk, which SQLite's WAL mode requires anyway);
* SQLite hands out a row id again only after the highest rows were deleted (``clear``,
  eviction). The reader notices (its highest row is gone or holds another key) and reads
  every key again.

What is given up: a key added without a signal (by an older mistral_nbenv on the same
directory) is learnt at the next signal from anyone; until then this process misses it and
asks the API once, as it would have before the other process wrote it. Past
:data:`MAX_KEYS` entries, or on any failure (no shared mapping, a locked or damaged
database), the index turns itself off for the directory and every lookup goes to SQLite.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import sqlite3
import threading
from pathlib import Path

from .registry import Registry

__all__ = ["MAX_KEYS", "SIGNAL_FILE", "Presence", "close_all", "presence_for"]

log = logging.getLogger(__name__)

#: The signal's file name inside the cache directory.
SIGNAL_FILE = "presence"
#: Above this many entries the index is off (its set costs ~77 bytes per entry: 15 MB here).
MAX_KEYS = 200_000
_DATABASE = "cache.db"  # diskcache's database file
_WIDTH = 8

_instances: Registry[str, Presence] = Registry()


def presence_for(directory: Path) -> Presence:
    """This process's :class:`Presence` for ``directory`` (made on first use)."""
    return _instances.get(str(directory), lambda: Presence(Path(directory)))


class Presence:
    """The keys one diskcache directory holds (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: Why the index is off ("" while it is on).
        self.off = ""
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._map: mmap.mmap | None = None
        self._db: sqlite3.Connection | None = None
        self._seen = b""  # the signal's value when the set was last brought up to date
        self._reading = False  # this process looks keys up here (a reader caught up once)
        self._hashes: set[int] = set()
        self._top = 0  # the highest row id read
        self._top_key: object = None  # the key that row held

    def __repr__(self) -> str:
        state = f"off: {self.off}" if self.off else f"{len(self._hashes)} keys"
        return f"Presence({str(self.directory)!r}, {state})"

    def may_hold(self, key: str) -> bool:
        """False only when ``key`` is certainly not stored in the directory."""
        found = self._map
        try:
            if found is not None and found[:_WIDTH] == self._seen:
                return hash(key) in self._hashes
        except ValueError:  # closed by close_all meanwhile: read afresh
            pass
        if self.off:
            return True
        return self._catch_up(key)

    def signal(self) -> None:
        """Tell every process that keys were added (call after the commit)."""
        if self.off:
            return
        with self._lock:
            try:
                if self._map is None and not (self.directory / SIGNAL_FILE).exists():
                    return  # no reader yet: the first one reads every row (after this commit)
                self._mapped()[:_WIDTH] = os.urandom(_WIDTH)
                if self._reading:  # learn this write now, not at the next caller's lookup
                    self._up_to_date()
            except Exception as exc:
                self._turn_off(exc)

    # -- reading ---------------------------------------------------------------------------

    def _catch_up(self, key: str) -> bool:
        with self._lock:
            if self.off:  # turned off while this thread waited
                return True
            try:
                self._up_to_date()
                self._reading = True
            except Exception as exc:
                self._turn_off(exc)
                return True
            return hash(key) in self._hashes

    def _up_to_date(self) -> None:
        """Read the rows the signal tells of, if it changed; caller holds ``_lock``."""
        now = self._mapped()[:_WIDTH]  # before the rows: see the module docstring
        if now != self._seen:
            self._read_new()
            self._seen = now

    def _mapped(self) -> mmap.mmap:
        """The signal file, mapped (created 0600 on first use); caller holds ``_lock``."""
        if self._map is None:
            path = self.directory / SIGNAL_FILE  # 0600 at most: a umask only takes bits away
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                if os.fstat(fd).st_size < _WIDTH:
                    # a value written, not a hole left by ftruncate: a full disk fails here,
                    # never as SIGBUS on the mapping. Any fresh value is a harmless signal.
                    os.pwrite(fd, os.urandom(_WIDTH), 0)
                self._map = mmap.mmap(fd, _WIDTH)
            finally:
                os.close(fd)
        return self._map

    def _read_new(self) -> None:
        """Add the keys of rows above the highest read; all keys if row ids were reused."""
        db = self._db
        if db is None:
            db = self._db = sqlite3.connect(
                str(self.directory / _DATABASE), isolation_level=None, check_same_thread=False
            )
        hashes, top, top_key = self._hashes, self._top, self._top_key
        db.execute("BEGIN")  # one snapshot for the check and the rows
        try:
            if top and _row_key(db, top) != top_key:
                hashes, top, top_key = set(), 0, None  # row ids were handed out again
            if not top:
                counted = db.execute("SELECT value FROM Settings WHERE key = 'count'").fetchone()
                if counted and int(counted[0]) > MAX_KEYS:
                    raise OverflowError(f"more than {MAX_KEYS} entries")
            rows = db.execute(
                "SELECT rowid, key FROM Cache WHERE rowid > ? ORDER BY rowid", (top,)
            ).fetchall()
        finally:
            db.execute("COMMIT")
        if len(hashes) + len(rows) > MAX_KEYS:  # before the set grows
            raise OverflowError(f"more than {MAX_KEYS} entries")
        hashes.update(hash(k) for _, k in rows if isinstance(k, str))
        self._hashes = hashes  # after a reuse, a whole new set: no reader sees half of one
        if rows:
            top, top_key = rows[-1]
        self._top, self._top_key = top, top_key

    def _turn_off(self, exc: BaseException) -> None:
        """Every later lookup goes to SQLite (the cache itself reports real store failures).

        Caller holds ``_lock``. The set is left as it is: a reader already past the fast
        path's check answers from a set that was true when it checked.
        """
        self.off = f"{type(exc).__name__}: {exc}"
        self._seen = b"off"  # never equal to the mapped value: the fast path is closed
        log.debug("mistral_nbenv: key index of %s is off (%s)", self.directory, self.off)


def close_all() -> None:
    """Close every index's connection and mapping (each reads afresh if used again)."""
    for presence in _instances.values():
        with presence._lock:
            with contextlib.suppress(Exception):
                if presence._db is not None:
                    presence._db.close()
                if presence._map is not None:
                    presence._map.close()
            presence._reset()


def _row_key(db: sqlite3.Connection, rowid: int) -> object:
    row = db.execute("SELECT key FROM Cache WHERE rowid = ?", (rowid,)).fetchone()
    return None if row is None else row[0]


def _after_fork() -> None:
    """In a forked child: no mapping, connection or set from the parent (read afresh)."""
    for presence in _instances.values():
        with contextlib.suppress(Exception):
            presence._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
