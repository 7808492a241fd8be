"""No wait without a bound: concurrency slots, abandoned streams, ``Out[n]`` (issue 18).

The real SDK against the loopback server, in a script-like process and in a real IPython
shell.  ``timeout`` is 1.5 s here so that a reclaimed slot comes quickly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from mistral_nbenv import ConcurrencyLimitError, StreamExpiredError, get_client
from mistral_nbenv.policies.concurrency import ConcurrencyLimiter
from mistral_nbenv.testing import MistralTestServer
from tests._browser_project import reset_core
from tests.test_magic import ReRaisingShell

LONG = [{"role": "user", "content": " ".join(f"word{i}" for i in range(40))}]
HELLO = [{"role": "user", "content": "hello slots"}]


@pytest.fixture
def short(lproject: MistralTestServer, monkeypatch: pytest.MonkeyPatch) -> MistralTestServer:
    """The loopback project with timeout = 1.5 s (development: 2 concurrent calls)."""
    monkeypatch.setenv("MISTRAL_NBENV_TIMEOUT", "1.5")
    reset_core()
    return lproject


def _abandon(client: Any) -> Any:
    stream = client.chat.stream(messages=LONG, cache=False)
    for _event in stream:
        break  # the first event only: the stream stays live and holds its slot
    return stream


def test_abandoned_streams_give_their_slots_to_the_next_call(short: MistralTestServer) -> None:
    client = get_client()
    assert client.settings.features.max_concurrent_requests == 2
    kept = [_abandon(client), _abandon(client)]
    assert client._concurrency.in_flight == 2
    answer = client.chat.complete(messages=HELLO, cache=False)  # waited <= timeout, not forever
    assert answer.choices[0].message.content
    # the older stream went idle past timeout first and gave its slot; only one was needed
    oldest, newest = kept
    with pytest.raises(StreamExpiredError, match=r"timeout=1\.5 s"):
        next(oldest)
    assert "expired" in repr(oldest)
    assert client._concurrency.streams == 1
    assert "word39" in "".join(ev.data.choices[0].delta.content or "" for ev in newest)
    assert client._concurrency.in_flight == 0


def test_streams_being_read_are_never_taken_and_the_wait_is_bounded(
    short: MistralTestServer,
) -> None:
    short.chunk_delay = 0.2  # 40+ events: about 8 s of steady reading each
    client = get_client()
    counts: list[int] = []
    started = threading.Barrier(3)

    def read() -> None:
        stream = client.chat.stream(messages=LONG, cache=False)
        started.wait()
        counts.append(sum(1 for _ in stream))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    started.wait()
    with pytest.raises(ConcurrencyLimitError) as caught:
        client.chat.complete(messages=HELLO, cache=False)
    for reader in readers:
        reader.join(30)
    assert counts == [counts[0], counts[0]]
    assert counts[0] > 40  # both streams read to the end: being read, they kept their slots
    error = caught.value
    assert (error.limit, error.streams, error.environment) == (2, 2, "development")
    message = str(error)
    assert "features.max_concurrent_requests=2" in message
    assert "2 by live streams" in message
    assert "timeout=1.5 s" in message
    assert client._concurrency.in_flight == 0


def test_a_closed_or_collected_stream_frees_its_slot_at_once(short: MistralTestServer) -> None:
    client = get_client()
    with client.chat.stream(messages=LONG, cache=False) as stream:
        next(stream)
        assert client._concurrency.in_flight == 1
    assert client._concurrency.in_flight == 0
    _abandon(client)  # not kept: garbage-collected
    assert client._concurrency.in_flight == 0


@pytest.fixture
def shell(short: MistralTestServer) -> Iterator[ReRaisingShell]:
    InteractiveShell.clear_instance()
    ip = ReRaisingShell()
    ip.run_cell("%load_ext mistral_nbenv")
    ip.run_cell("from mistral_nbenv import get_client\nclient = get_client()")
    yield ip
    ip.run_cell("%unload_ext mistral_nbenv")
    InteractiveShell.clear_instance()


def test_a_stream_left_in_out_never_pins_a_slot(
    shell: ReRaisingShell, short: MistralTestServer
) -> None:
    line = f"client.chat.stream(messages={LONG!r}, cache=False)"
    first = shell.run_cell(line).result
    second = shell.run_cell(line).result
    client = shell.user_ns["client"]
    assert client._concurrency.in_flight == 0  # released after each cell
    result = shell.run_cell(f"client.chat.complete(messages={HELLO!r}, cache=False)").result
    assert result.choices[0].message.content
    assert short.count() == 3
    # still readable after giving the slot back, and read to the end
    words = "".join(ev.data.choices[0].delta.content or "" for ev in first)
    assert "word39" in words
    second.close()
    assert client._concurrency.in_flight == 0


def test_abandoned_streams_in_a_shell_are_reclaimed(shell: ReRaisingShell) -> None:
    shell.run_cell(
        "kept = []\n"
        "for _ in range(2):\n"
        f"    s = client.chat.stream(messages={LONG!r}, cache=False)\n"
        "    for ev in s:\n"
        "        break\n"
        "    kept.append(s)\n"
    )
    client = shell.user_ns["client"]
    assert client._concurrency.in_flight == 2
    result = shell.run_cell(f"client.chat.complete(messages={HELLO!r}, cache=False)").result
    assert result.choices[0].message.content
    assert client._concurrency.in_flight == 1  # the older stream gave its slot, the newer kept it
    with pytest.raises(StreamExpiredError):
        shell.run_cell("next(kept[0])")
    shell.run_cell("kept[1].close()")
    assert client._concurrency.in_flight == 0


def test_every_wait_for_a_slot_has_a_bound_sync_and_async() -> None:
    limiter = ConcurrencyLimiter(1, environment="qa")
    limiter.acquire()
    with pytest.raises(ConcurrencyLimitError, match="environment 'qa'"):
        limiter.acquire(0.2)

    async def wait() -> None:
        await limiter.acquire_async(0.2)

    with pytest.raises(ConcurrencyLimitError, match=r"timeout=0\.2 s"):
        asyncio.run(wait())
    limiter.release()
    assert limiter.in_flight == 0
    limiter.acquire(0.2)  # a timed-out waiter left no trace in the queue
    limiter.release()
    assert limiter.in_flight == 0


class _Idle:
    """A holder idle since ``since``: reclaimable once ``limit`` seconds have passed."""

    def __init__(self, limiter: ConcurrencyLimiter, *, busy: bool = False) -> None:
        self.limiter = limiter
        self.busy = busy
        self.expired = False

    def idle_left(self, now: float) -> float | None:
        return None if self.busy else -1.0

    def expire(self) -> bool:
        if self.busy:
            return False
        self.expired = True
        self.limiter.forget(self)
        self.limiter.release()
        return True


def test_only_idle_holders_are_reclaimed() -> None:
    limiter = ConcurrencyLimiter(2)
    limiter.acquire()
    limiter.acquire()
    busy, idle = _Idle(limiter, busy=True), _Idle(limiter)
    limiter.hold(busy)
    limiter.hold(idle)
    limiter.acquire(5.0)  # the idle one gives its slot
    assert (idle.expired, busy.expired) == (True, False)
    with pytest.raises(ConcurrencyLimitError, match="1 by live streams"):
        limiter.acquire(0.3)
