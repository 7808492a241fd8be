"""The store seam: both embedded stores honour the protocols; the disk one across processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from mistral_nbenv._forksafe import Lock, PerProcess, RLock
from mistral_nbenv.policies.ratelimit import RateLimiter
from mistral_nbenv.store import (
    Budget,
    CacheUnavailableWarning,
    KeyValue,
    Ledger,
    Locked,
    UnreadableEntry,
)
from mistral_nbenv.store.local import DiskStore, MemoryStore, close_all

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
    for key in ("pickled", "latin1"):  # never unpickled nor guessed: unreadable, said so
        with pytest.raises(UnreadableEntry):
            disk.get(key)
    assert disk.get("absent") is None
    assert disk.update("pickled", lambda state: (None, state)) is None
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
    for path in (tmp_path / "private").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    close_all()


_WORKER = """
import sys
from pathlib import Path
from mistral_nbenv.store.local import DiskStore
store = DiskStore(Path(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    store.update("n", lambda s: (str(int(s or 0) + 1), None))
"""


def test_update_is_atomic_across_processes(tmp_path: Path) -> None:
    """The store of the rate limit's state and of the usage ledger: no lost update."""
    n = 200
    argv = [sys.executable, "-c", _WORKER, str(tmp_path / "shared"), str(n)]
    procs = [subprocess.Popen(argv, cwd=ROOT) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert DiskStore(tmp_path / "shared").get("n") == str(3 * n)
    close_all()


# --------------------------------------------------------------------------- the limiter on it


class _Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    "state",
    [
        "{not a state",
        '{"w": [[1, 2]]}',
        '{"w": [[1000000, NaN, 1]], "until": 0}',
        '{"w": [[1000000, 1, 1e300]], "until": 0}',
        '{"w": [[1000000, -5, 1]], "until": 0}',
        '{"w": [], "until": Infinity}',
        "é,1",
    ],
)
def test_an_unreadable_budget_state_is_an_empty_window_with_a_warning(
    state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mistral_nbenv import store as store_module

    monkeypatch.setattr(store_module, "_warned", set())  # one warning per location: this one
    clock = _Clock()
    store = MemoryStore()
    store.set("bucket", state, None)
    rl = RateLimiter(
        store, requests_per_minute=1, tokens_per_minute=0, clock=clock, sleep=clock.sleep
    )
    with pytest.warns(CacheUnavailableWarning, match="tampered with"):
        assert rl.acquire() == 0.0  # the window is empty: at once
    assert rl.acquire() == pytest.approx(61.0)  # and it counted that one


@pytest.mark.parametrize("state", ["0.5,1.0,1000.0", "0.5,1.0,1000.0,0.0"])
def test_an_earlier_releases_state_is_an_empty_window_silently(state: str) -> None:
    clock = _Clock()
    store = MemoryStore()
    store.set("bucket", state, None)
    rl = RateLimiter(
        store, requests_per_minute=1, tokens_per_minute=0, clock=clock, sleep=clock.sleep
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rl.acquire() == 0.0


def test_a_clock_stepped_back_costs_at_most_one_window() -> None:
    clock = _Clock()
    rl = RateLimiter(
        MemoryStore(), requests_per_minute=1, tokens_per_minute=0, clock=clock, sleep=clock.sleep
    )
    rl.acquire()
    clock.now -= 3600  # NTP, a VM resume, another host's skewed clock on a shared cache dir
    started = clock.now
    rl.acquire()
    assert clock.now - started <= 61.0 + 1e-6


def test_a_slot_slightly_ahead_is_kept_where_it_is() -> None:
    clock = _Clock()
    store = MemoryStore()
    ahead = int(clock.now) + 1  # another host, a second ahead, admitted one
    store.set("bucket", f'{{"w": [[{ahead}, 1, 0]], "until": 0}}', None)
    rl = RateLimiter(
        store, requests_per_minute=1, tokens_per_minute=0, clock=clock, sleep=clock.sleep
    )
    assert rl.acquire() == pytest.approx(ahead + 1 + 60 - 1_000_000.0)  # until it leaves


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
        assert rl.acquire() == 0.0
    assert [w.category for w in caught] == [CacheUnavailableWarning]
    assert "broken://store" in str(caught[0].message)


# --------------------------------------------------------------------- the rate limit's file


def _bump(state: str | None) -> tuple[str, int]:
    n = int(state or 0) + 1
    return str(n), n


def test_a_forked_child_never_inherits_a_lock_held_by_another_thread() -> None:
    """The package's locks (``_forksafe.Lock``) are free in a child, whatever the parent held."""
    lock, rlock = Lock(), RLock()
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock, rlock:
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(5)
    try:
        pid = os.fork()
        if pid == 0:  # the child: both locks free at once, and usable
            ok = lock.acquire(timeout=2) and rlock.acquire(timeout=2)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join()
    assert os.waitstatus_to_exitcode(status) == 0
    assert lock.acquire(blocking=False)  # the parent's lock, released by its thread
    lock.release()


def test_a_per_process_value_is_made_again_in_a_child_and_kept_in_the_parent() -> None:
    made: list[int] = []
    value = PerProcess(lambda: made.append(os.getpid()) or len(made))
    assert value.get() == 1 == value.get()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, str(value.get()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"2"  # the child built its own
    assert value.get() == 1  # the parent's is unchanged


class _LockedOnce:
    """A ledger/store whose first ``n`` writes find the lock held by a stopped process."""

    def __init__(self, inner: MemoryStore, location: str, n: int = 1) -> None:
        self.inner = inner
        self.location = location  # warnings are once per location and process
        self.n = n

    def add(self, bucket: str, amounts: dict[str, float]) -> None:
        if self.n > 0:
            self.n -= 1
            raise Locked("test-ledger was locked by another process for more than 2 s")
        self.inner.add(bucket, amounts)

    def set(self, key: str, value: str, ttl: float | None) -> None:
        if self.n > 0:
            self.n -= 1
            raise Locked("test-cache was locked by another process for more than 2 s")
        self.inner.set(key, value, ttl)

    def get(self, key: str) -> str | None:
        return self.inner.get(key)


def test_usage_a_locked_ledger_could_not_take_is_added_with_the_next_write() -> None:
    from mistral_nbenv.policies.usage import UsageRecorder

    ledger = MemoryStore()
    recorder = UsageRecorder(
        _LockedOnce(ledger, "locked-ledger"), "staging", clock=lambda: 1_764_892_800.0
    )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        recorder.record("m", requests=1, prompt_tokens=5)  # locked: kept
    assert ledger.totals() == {}
    assert any("keeps its counts" in str(w.message) for w in seen)
    recorder.record("m", requests=1, prompt_tokens=7)  # free again: both counted, once
    assert ledger.totals() == {"2025-12-05|staging|m": {"requests": 2.0, "prompt_tokens": 12.0}}
    recorder.record("m", requests=1)
    assert ledger.totals()["2025-12-05|staging|m"]["requests"] == 3.0


def test_a_locked_cache_skips_one_write_and_stays_on() -> None:
    from mistral_nbenv.policies.cache import ResponseCache

    store = _LockedOnce(MemoryStore(), "locked-cache")
    cache = ResponseCache(store, namespace="staging", ttl_seconds=60)  # type: ignore[arg-type]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cache.set("k", '{"a": 1}')  # locked: not stored
    assert cache.get("k") is None
    assert cache.available  # not given up for the rest of the process
    assert any("are again after" in str(w.message) for w in seen)
    cache.set("k", '{"a": 1}')
    assert cache.get("k") == '{"a": 1}'
