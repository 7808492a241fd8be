"""Rate-limit buckets (fake clock) and the cross-loop concurrency limiter."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from mistral_nbenv.policies.concurrency import ConcurrencyLimiter
from mistral_nbenv.policies.ratelimit import RateLimiter, add_wait_listener
from mistral_nbenv.store import CacheUnavailableWarning
from mistral_nbenv.store import local as local_store
from mistral_nbenv.store.local import DiskStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def limiter(tmp_path: Path | None, clock: FakeClock, rpm: float = 0, tpm: float = 0) -> RateLimiter:
    return RateLimiter(
        DiskStore(tmp_path / "rl") if tmp_path else None,
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        environment="staging",
        clock=clock,
        sleep=clock.sleep,
    )


def _admissions(
    rl: RateLimiter, clock: FakeClock, seconds: float, tokens: float = 0
) -> list[float]:
    """The clock readings at which ``rl`` admitted requests, asked back to back for
    ``seconds`` (fake time)."""
    start, times = clock.now, []
    while True:
        rl.acquire(tokens)
        if clock.now - start > seconds:
            return times
        times.append(clock.now)


def _most_in_any_window(times: list[float], length: float) -> int:
    """The most admissions in any window of ``length`` seconds."""
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= length:
            first += 1
        most = max(most, last - first + 1)
    return most


@pytest.mark.parametrize("on_disk", [True, False])
@pytest.mark.parametrize("rpm", [10, 60, 600])
def test_a_per_minute_limit_admits_that_many_at_once_and_never_more_in_any_minute(
    tmp_path: Path, on_disk: bool, rpm: int
) -> None:
    clock = FakeClock()
    rl = limiter(tmp_path if on_disk else None, clock, rpm=rpm)
    times = _admissions(rl, clock, 200)
    assert times[rpm - 1] == times[0]  # L at once: nobody waits for the first L
    assert _most_in_any_window(times, 60.0) == rpm  # never more than L in any minute ...
    for length in (1.0, 10.0, 30.0, 59.0):
        assert _most_in_any_window(times, length) <= rpm
    # ... and the limit is used: within each 61 s (a window and the one-second slot) L more
    assert len(times) >= rpm * (200 // 61)
    assert max(b - a for a, b in itertools.pairwise(times)) <= 61.0 + 1e-6


def test_ten_a_minute_is_ten_at_once_not_one_every_six_seconds(tmp_path: Path) -> None:
    clock = FakeClock()
    rl = limiter(tmp_path, clock, rpm=10)
    assert [rl.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]  # three quick cells: no wait
    assert clock.slept == []


def test_two_limiters_on_one_directory_share_the_budget(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = limiter(tmp_path, clock, rpm=2), limiter(tmp_path, clock, rpm=2)
    a.acquire()
    a.acquire()
    b.acquire()  # the shared window holds two: b waits for the first to leave it
    assert clock.slept == [pytest.approx(61.0)]


def _shared_state(rl: RateLimiter) -> tuple[float, float]:
    """Requests and tokens counted in the window, as another process reads them."""
    from mistral_nbenv.policies.ratelimit import _window

    raw = rl._store.update("bucket", lambda raw: (None, raw))
    window, _until = _window(raw, rl.clock())
    return sum(e[1] for e in window), sum(e[2] for e in window)


def test_every_admission_and_correction_is_in_the_shared_state_at_once(tmp_path: Path) -> None:
    """Write-through: nothing is held in memory, so another process sees each admission
    and each token correction as soon as the call that made it goes on."""
    clock = FakeClock()
    rl = limiter(tmp_path, clock, rpm=60_000, tpm=6_000_000)
    other = limiter(tmp_path, clock, rpm=60_000, tpm=6_000_000)
    assert _shared_state(other) == (0, 0)
    slots: list[int] = []
    for n in range(1, 4):
        rl.acquire(50, slots)
        assert _shared_state(other) == (n, 50 * n)
    rl.reconcile(50, 80, slots[-1:])  # the last answer used 30 tokens more
    assert _shared_state(other) == (3, 180)
    rl.reconcile(50, 0, slots[:1])  # the first failed: its estimate is given back
    assert _shared_state(other) == (3, 130)
    assert clock.slept == []


def test_tokens_per_minute_and_reconcile(tmp_path: Path) -> None:
    clock = FakeClock()
    rl = limiter(tmp_path, clock, tpm=600)
    slots: list[int] = []
    assert rl.acquire(500, slots) == 0  # 500 of 600 at once
    rl.reconcile(500, 550, slots)  # 50 more than estimated
    assert rl.acquire(50) == 0  # exactly the 600
    clock.now += 30
    rl.acquire(10)  # the window is full: wait until the first slot leaves it
    assert sum(clock.slept) == pytest.approx(31.0)
    big = limiter(None, FakeClock(), tpm=60)
    assert big.acquire(10_000) == 0  # larger than the limit: admitted alone in an empty window


def test_a_window_refuses_to_sleep_longer_than_a_minute_and_a_slot(tmp_path: Path) -> None:
    clock = FakeClock()
    rl = limiter(tmp_path, clock, rpm=1, tpm=100)
    rl.acquire(100)
    rl.acquire(100)
    rl.pause(3600)  # a Retry-After of an hour pauses one window at most
    rl.acquire(100)
    assert max(clock.slept) <= 61.0


def test_long_wait_is_announced_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    seen: list[tuple[str, float]] = []
    remove = add_wait_listener(lambda env, s: seen.append((env, s)))
    try:
        rl = limiter(tmp_path, clock, rpm=1)
        rl.acquire()
        with caplog.at_level("INFO", logger="mistral_nbenv.ratelimit"):
            rl.acquire()
    finally:
        remove()
    assert len(seen) == 1
    assert seen[0][0] == "staging"
    assert seen[0][1] > 1
    assert len([r for r in caplog.records if "waiting" in r.getMessage()]) == 1


def test_disabled_limiter_never_waits(tmp_path: Path) -> None:
    clock = FakeClock()
    rl = limiter(tmp_path, clock)
    assert not rl.enabled
    for _ in range(100):
        rl.acquire(10**6)
    assert clock.slept == []


def test_concurrency_limiter_threads() -> None:
    cap = ConcurrencyLimiter(3)
    peak, current, lock = [0], [0], threading.Lock()

    def work() -> None:
        cap.acquire()
        try:
            with lock:
                current[0] += 1
                peak[0] = max(peak[0], current[0])
            time.sleep(0.02)
            with lock:
                current[0] -= 1
        finally:
            cap.release()

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 3
    assert cap.in_flight == 0


def test_concurrency_limiter_across_loops_and_threads() -> None:
    cap = ConcurrencyLimiter(2)
    peak, current, lock = [0], [0], threading.Lock()

    async def work() -> None:
        await cap.acquire_async()
        try:
            with lock:
                current[0] += 1
                peak[0] = max(peak[0], current[0])
            await asyncio.sleep(0.02)
            with lock:
                current[0] -= 1
        finally:
            cap.release()

    async def many() -> None:
        await asyncio.gather(*(work() for _ in range(6)))

    threads = [threading.Thread(target=asyncio.run, args=(many(),)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2
    assert cap.in_flight == 0


def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    cap = ConcurrencyLimiter(1)

    async def run() -> None:
        await cap.acquire_async()
        waiter = asyncio.ensure_future(cap.acquire_async())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        cap.release()

    asyncio.run(run())
    assert cap.in_flight == 0
    cap.acquire()
    cap.release()


def test_async_acquire_waits_like_acquire(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()

    async def sleep(seconds: float) -> None:
        clock.sleep(seconds)

    rl = RateLimiter(
        None,
        requests_per_minute=1,  # one request, then the next a minute (and a slot) later
        tokens_per_minute=0,
        environment="staging",
        clock=clock,
        sleep=lambda s: pytest.fail("the blocking sleep was used"),
        async_sleep=sleep,
    )
    with caplog.at_level("INFO", logger="mistral_nbenv.ratelimit"):
        assert asyncio.run(rl.acquire_async()) == 0.0
        assert asyncio.run(rl.acquire_async()) == pytest.approx(61.0)
    assert clock.slept == [pytest.approx(61.0)]
    assert len([r for r in caplog.records if "waiting" in r.getMessage()]) == 1


def test_acquire_returns_the_seconds_waited(tmp_path: Path) -> None:
    clock = FakeClock()
    clock.now += 0.25  # a quarter into a slot
    rl = limiter(tmp_path, clock, rpm=2)
    assert rl.acquire() == 0.0
    assert rl.acquire() == 0.0
    assert rl.acquire() == pytest.approx(60.75)  # until the slot of the first has left


# ------------------------------------------------- an event loop never waits inside SQLite

_HOLD = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
print("released", flush=True)
"""


def _hold_budget(directory: Path) -> subprocess.Popen[str]:
    """Another process holding the budget's write lock until told (a line on its stdin)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(directory / "cache.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding"
    return holder


def _release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    assert holder.stdout is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "released"
    assert holder.wait(timeout=30) == 0
    holder.stdin.close()
    holder.stdout.close()


async def _ticking_until(task: asyncio.Future[float], ticks_wanted: int) -> int:
    """Tick every 10 ms while ``task`` runs; return the ticks counted before ``ticks_wanted``
    were reached or the task ended (a blocked loop counts none)."""
    ticks = 0
    while not task.done() and ticks < ticks_wanted:
        await asyncio.sleep(0.01)
        ticks += 1
    return ticks


def test_an_async_admission_waits_for_another_processs_transaction_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "rl"
    rl = RateLimiter(  # 600 rpm: a burst of 10
        DiskStore(directory),
        requests_per_minute=600,
        tokens_per_minute=0,
        environment="staging",
        clock=FakeClock(),  # a clock that stands still: no refill between the two admissions
    )
    assert rl.acquire() == 0.0  # the database exists
    holder = _hold_budget(directory)

    async def main() -> tuple[int, bool, float]:
        task = asyncio.ensure_future(rl.acquire_async())
        ticks = await _ticking_until(task, 20)  # 0.2 s of other tasks running meanwhile
        waiting = not task.done()
        _release(holder)
        return ticks, waiting, await asyncio.wait_for(task, timeout=30)

    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheUnavailableWarning)  # still the shared budget
        ticks, waiting, waited = asyncio.run(main())
    assert ticks == 20, "the event loop was blocked while the budget was locked"
    assert waiting, "the admission went ahead while another process held the budget"
    assert waited == 0.0  # no rate-limit wait: the burst had room
    assert isinstance(rl._store, DiskStore)  # not fallen back to memory
    # the admission was written to the shared state, after the holder's transaction
    assert _shared_state(rl)[0] == 2  # both admissions counted


def test_an_async_admission_gives_up_on_a_lock_held_too_long_and_keeps_the_loop_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_store, "BUSY_TIMEOUT", 0.5)  # before the directory is opened
    directory = tmp_path / "rl"
    rl = RateLimiter(
        DiskStore(directory), requests_per_minute=600, tokens_per_minute=0, environment="staging"
    )
    rl.acquire()
    holder = _hold_budget(directory)
    try:

        async def main() -> tuple[int, float]:
            task = asyncio.ensure_future(rl.acquire_async())
            ticks = await _ticking_until(task, 10_000)  # until the admission gives up
            return ticks, await task

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ticks, waited = asyncio.run(main())
    finally:
        _release(holder)
    assert waited == 0.0
    assert ticks >= 3, "the event loop was blocked while the budget was locked"  # blocked: 1
    found = [str(w.message) for w in caught if issubclass(w.category, CacheUnavailableWarning)]
    assert len(found) == 1, found
    assert "the rate-limit state of environment 'staging'" in found[0]
    assert "was locked by another process for more than 0.5 s" in found[0]
    assert "share it again as soon as it is free" in found[0]
    assert isinstance(rl._store, DiskStore)  # not given up: the next admission shares again
