"""The store seam: both embedded stores honour the protocols; the disk one across processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mistral_nbenv.ratelimit import RateLimiter
from mistral_nbenv.store import Budget, Busy, CacheUnavailableWarning, KeyValue, Ledger, budgetfile
from mistral_nbenv.store.budgetfile import DATABASE, BudgetFile, budget_file
from mistral_nbenv.store.budgetfile import close_all as budget_close_all
from mistral_nbenv.store.local import DiskStore, MemoryStore, close_all
from mistral_nbenv.store.registry import Registry

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["disk", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "disk":
        yield DiskStore(tmp_path / "store")
        close_all()
    else:
        yield MemoryStore()


def test_both_stores_implement_every_protocol(store: Any) -> None:
    for protocol in (KeyValue, Budget, Ledger):
        for name in (n for n in vars(protocol) if not n.startswith("_")):
            assert callable(getattr(store, name)) or name == "location", (protocol, name)


def test_key_value_roundtrip_ttl_count_clear(store: Any) -> None:
    assert store.get("a") is None
    store.set("a", '{"x": 1}', None)
    store.set("b", "{}", 0.05)
    assert store.get("a") == '{"x": 1}'
    assert store.count()[0] == 2
    time.sleep(0.1)
    assert store.get("b") is None  # expired
    assert store.count()[0] == 1
    assert store.clear() == 1
    assert store.get("a") is None


def test_update_is_read_modify_write(store: Any) -> None:
    def bump(state: str | None) -> tuple[str, int]:
        n = int(state or 0) + 1
        return str(n), n

    assert [store.update("n", bump) for _ in range(3)] == [1, 2, 3]
    assert store.update("n", lambda state: (None, state)) == "3"  # None keeps the state


def test_ledger_adds_per_bucket(store: Any) -> None:
    store.add("2026-12-03|staging|m", {"requests": 1, "prompt_tokens": 10})
    store.add("2026-12-03|staging|m", {"requests": 1, "completion_tokens": 5})
    store.add("2026-12-03|production|m", {"requests": 2})
    assert store.totals() == {
        "2026-12-03|staging|m": {"requests": 2.0, "prompt_tokens": 10.0, "completion_tokens": 5.0},
        "2026-12-03|production|m": {"requests": 2.0},
    }


def test_disk_store_reads_json_text_only_and_stays_private(tmp_path: Path) -> None:
    disk = DiskStore(tmp_path / "private")
    disk.set("ok", '{"a": 1}', None)
    disk.db().set("pickled", ["a", "list"])  # diskcache would pickle this
    disk.db().set("latin1", "é".encode("latin-1"))
    assert disk.get("ok") == '{"a": 1}'
    assert disk.get("pickled") is None
    assert disk.get("latin1") is None
    assert disk.update("pickled", lambda state: (None, state)) is None
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
    for path in (tmp_path / "private").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    close_all()


_WORKER = """
import sys
from pathlib import Path
from mistral_nbenv.store.budgetfile import budget_file
from mistral_nbenv.store.local import DiskStore
store = {make}(Path(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    store.update("n", lambda s: (str(int(s or 0) + 1), None))
"""


@pytest.mark.parametrize(
    ("make", "read"),
    [
        ("DiskStore", lambda d: DiskStore(d).get("n")),
        ("budget_file", lambda d: BudgetFile(d).update("n", lambda s: (None, s))),
    ],
)
def test_update_is_atomic_across_processes(
    tmp_path: Path, make: str, read: Callable[[Path], str | None]
) -> None:
    """The diskcache store (the usage ledger's) and the budget file (the rate limit's)."""
    n = 200
    argv = [sys.executable, "-c", _WORKER.format(make=make), str(tmp_path / "shared"), str(n)]
    procs = [subprocess.Popen(argv, cwd=ROOT) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert read(tmp_path / "shared") == str(3 * n)  # no lost update
    close_all()


# --------------------------------------------------------------------------- the limiter on it


class _Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("state", ["{not a state", "1,2", "nan,nan,nan", "1,1,inf", "é,1,2"])
def test_unreadable_budget_state_is_a_full_budget(state: str) -> None:
    clock = _Clock()
    store = MemoryStore()
    store.set("bucket", state, None)
    rl = RateLimiter(
        store, requests_per_minute=60, tokens_per_minute=0, clock=clock, sleep=clock.sleep
    )
    assert rl.acquire() == 0.0  # the burst of one, at once
    assert rl.acquire() == pytest.approx(1.0)


def test_a_clock_stepped_back_costs_at_most_one_refill() -> None:
    clock = _Clock()
    rl = RateLimiter(
        MemoryStore(), requests_per_minute=60, tokens_per_minute=0, clock=clock, sleep=clock.sleep
    )
    rl.acquire()
    clock.now -= 30  # NTP, a VM resume, another host's skewed clock on a shared cache dir
    started = clock.now
    rl.acquire()
    assert clock.now - started <= 1.0 + 1e-6


def test_a_stored_time_slightly_ahead_is_kept_never_credited_twice() -> None:
    clock = _Clock()
    store = MemoryStore()
    store.set("bucket", f"0.0,0.0,{clock.now + 0.5!r}", None)  # another host, 0.5 s ahead
    rl = RateLimiter(
        store, requests_per_minute=60, tokens_per_minute=0, clock=clock, sleep=clock.sleep
    )
    assert rl.acquire() == pytest.approx(1.5)  # the 0.5 s is not credited, then one refill
    stored = float(str(store.get("bucket")).split(",")[2])
    assert stored >= clock.now - 1e-9  # written as the later of the two times


class _Broken:
    location = "broken://store"

    def update(self, key: str, change: Any) -> Any:
        raise OSError("disk I/O error")


def test_a_failing_budget_store_falls_back_to_memory_with_one_warning() -> None:
    clock = _Clock()
    rl = RateLimiter(
        _Broken(), requests_per_minute=60, tokens_per_minute=0, clock=clock, sleep=clock.sleep
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert rl.acquire() == 0.0
        assert rl.acquire() == pytest.approx(1.0)
    assert [w.category for w in caught] == [CacheUnavailableWarning]
    assert "broken://store" in str(caught[0].message)


# --------------------------------------------------------------------- the rate limit's file


def _bump(state: str | None) -> tuple[str, int]:
    n = int(state or 0) + 1
    return str(n), n


def test_budget_file_is_read_modify_write_and_a_failed_change_keeps_the_state(
    tmp_path: Path,
) -> None:
    budget = BudgetFile(tmp_path / "rl")
    assert [budget.update("n", _bump) for _ in range(3)] == [1, 2, 3]
    assert budget.update("n", lambda state: (None, state)) == "3"  # None keeps the state

    def fails(state: str | None) -> tuple[str, None]:
        raise ValueError("in the middle")

    with pytest.raises(ValueError, match="in the middle"):
        budget.update("n", fails)
    assert budget.update("n", _bump) == 4  # rolled back, and the file is usable again
    assert BudgetFile(tmp_path / "rl").update("n", _bump) == 5  # a second connection agrees
    budget.close()


def test_budget_file_try_update_says_busy_at_once_and_update_still_waits(tmp_path: Path) -> None:
    budget = BudgetFile(tmp_path / "rl")
    assert budget.update("n", _bump) == 1
    other = sqlite3.connect(
        tmp_path / "rl" / DATABASE, isolation_level=None, check_same_thread=False
    )
    other.execute("BEGIN IMMEDIATE")  # another connection's transaction holds the budget
    ran: list[str | None] = []

    def records(state: str | None) -> tuple[str, None]:
        ran.append(state)
        return "99", None

    with pytest.raises(Busy, match="locked"):
        budget.try_update("n", records)
    assert ran == []  # nothing ran, nothing was taken
    # the patient update (a sync caller) waits for the other transaction again
    threading.Timer(0.3, lambda: other.execute("COMMIT")).start()
    assert budget.update("n", _bump) == 2
    assert budget.try_update("n", _bump) == 3  # free now: the same update
    assert BudgetFile(tmp_path / "rl").update("n", lambda state: (None, state)) == "3"
    other.close()
    budget.close()


def test_budget_file_try_update_says_busy_while_another_thread_of_this_process_updates(
    tmp_path: Path,
) -> None:
    budget = BudgetFile(tmp_path / "rl")
    inside, leave = threading.Event(), threading.Event()

    def slow(state: str | None) -> tuple[str, None]:
        inside.set()
        assert leave.wait(30)
        return str(int(state or 0) + 1), None

    thread = threading.Thread(target=budget.update, args=("n", slow))
    thread.start()
    assert inside.wait(30)  # the other thread is inside its transaction
    with pytest.raises(Busy, match="another thread"):
        budget.try_update("n", _bump)
    leave.set()
    thread.join(30)
    assert budget.try_update("n", _bump) == 2  # its update counted, then this one
    budget.close()


def test_budget_file_try_update_on_a_fresh_directory_makes_the_database(tmp_path: Path) -> None:
    budget = BudgetFile(tmp_path / "fresh")
    assert budget.try_update("n", _bump) == 1  # opened without waiting, set up, written
    assert budget.update("n", _bump) == 2
    assert stat.S_IMODE((tmp_path / "fresh" / DATABASE).stat().st_mode) == 0o600
    budget.close()


def test_budget_file_stays_private_and_reads_text_only(tmp_path: Path) -> None:
    directory = tmp_path / "rl"
    directory.mkdir(mode=0o755)
    db = sqlite3.connect(directory / DATABASE)  # left by someone with a looser umask
    db.execute("CREATE TABLE budget (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
    db.execute("INSERT INTO budget VALUES ('blob', ?)", (b"\x80\x03pickle",))
    db.commit()
    db.close()
    (directory / DATABASE).chmod(0o644)
    budget = BudgetFile(directory)
    assert budget.update("blob", lambda state: (None, state)) is None  # not text: absent
    budget.update("n", _bump)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    made = sorted(p.name for p in directory.iterdir())
    assert made == [DATABASE, DATABASE + "-shm", DATABASE + "-wal"]
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    budget.close()


_TOGETHER = """
import sys, time
from pathlib import Path
from mistral_nbenv.store.budgetfile import budget_file
root, start = Path(sys.argv[1]), float(sys.argv[2])
for i in range(int(sys.argv[3])):
    while time.time() < start + 0.25 * i:  # every process opens the same fresh directory
        pass
    budget_file(root / str(i)).update("n", lambda s: (str(int(s or 0) + 1), None))
"""


def test_processes_starting_together_on_a_fresh_budget_directory_all_get_in(
    tmp_path: Path,
) -> None:
    """Switching a new database to WAL says "database is locked" at once, without SQLite's
    busy wait, while another process does the same: notebooks started together."""
    processes, rounds = 6, 8
    start = time.time() + 2.0  # after every interpreter has started
    argv = [sys.executable, "-c", _TOGETHER, str(tmp_path), repr(start), str(rounds)]
    procs = [
        subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * processes, [
        p.stderr.read()[-500:] for p in procs if p.stderr is not None
    ]
    for i in range(rounds):
        got = BudgetFile(tmp_path / str(i)).update("n", lambda s: (None, s))
        assert got == str(processes), i
    budget_close_all()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_opens_its_own_budget_connection(tmp_path: Path) -> None:
    budget = budget_file(tmp_path / "rl")
    assert budget.update("n", _bump) == 1  # the parent's connection is open
    parents = budget._db
    pid = os.fork()
    if pid == 0:  # the child: its own connection, the parent's kept (never closed) and unused
        code = 1
        try:
            if budget._db is None and parents in budgetfile._inherited:
                for _ in range(50):
                    budget.update("n", _bump)
                code = 0 if budget._db is not parents else 2
        finally:
            os._exit(code)
    for _ in range(50):
        budget.update("n", _bump)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert budget.update("n", lambda s: (None, s)) == "101"  # no update lost on either side
    budget_close_all()
    assert budget_file(tmp_path / "rl") is not budget  # forgotten: the next one opens afresh


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_never_uses_a_connection_of_a_budget_file_outside_the_registry(
    tmp_path: Path,
) -> None:
    made = BudgetFile(tmp_path / "made")  # made directly, never registered
    forgotten = budget_file(tmp_path / "forgotten")
    budget_close_all()  # forgotten by the registry while a limiter would still hold it
    for budget in (made, forgotten):
        assert budget.update("n", _bump) == 1  # each has its own connection open now
    parents = [made._db, forgotten._db]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            parked = all(any(db is kept for kept in budgetfile._inherited) for db in parents)
            if made._db is None and forgotten._db is None and parked:
                code = 0 if [b.update("n", _bump) for b in (made, forgotten)] == [2, 2] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert made._db is parents[0]  # the parent goes on with its own connections
    assert forgotten._db is parents[1]
    assert [b.update("n", _bump) for b in (made, forgotten)] == [3, 3]


# ------------------------------------------------------------------ one object per location


def test_a_registry_makes_each_object_once_even_from_many_threads() -> None:
    registry: Registry[str, object] = Registry()
    made: list[str] = []
    start = threading.Barrier(8)

    def make(key: str) -> object:
        made.append(key)
        time.sleep(0.01)  # a slow constructor: a second maker would show here
        return object()

    found: list[object] = []

    def worker() -> None:
        start.wait()
        found.append(registry.get("a", lambda: make("a")))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert made == ["a"]
    assert len({id(x) for x in found}) == 1
    assert registry.values() == [found[0]]
    assert registry.clear() == [found[0]]
    assert len(registry) == 0
    assert registry.get("a", lambda: make("a")) is not found[0]  # forgotten: made afresh


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_finds_a_registry_free_that_another_thread_held() -> None:
    registry: Registry[str, int] = Registry()
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with registry._lock:  # the moment of the fork, in another thread
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: the holder thread does not exist here; its lock must not block
        code = 1
        try:
            signal.alarm(10)  # a deadlock ends the child instead of hanging the suite
            code = 0 if registry.get("k", lambda: 7) == 7 else 2
        finally:
            os._exit(code)
    release.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
